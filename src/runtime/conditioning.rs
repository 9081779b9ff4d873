//! The image-conditioning verbs, after ComfyUI's Wan nodes:
//! `image_to_video` (`WanImageToVideo`), `first_last_to_video`
//! (`WanFirstLastFrameToVideo`) and `ti2v_latent`
//! (`Wan22ImageToVideoLatent`). Each resizes the images, encodes the pixel
//! video with the VAE (recorded as that VAE's `encode`), and builds the
//! latent with its `image_cond` or `noise_mask` (`crate::conditioning`).

use super::dry;
use super::error::{tensor_err, Result, RuntimeError};
use super::options::{FrameCond, FrameCondOptions};
use super::registry::ModelId;
use super::runtime::Runtime;
use crate::conditioning as cond;
use candle_core::{DType, Device, Tensor};

/// Which node a verb is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameNode {
    ImageToVideo,
    FirstLastToVideo,
    Ti2vLatent,
}

impl FrameNode {
    pub fn name(self) -> &'static str {
        match self {
            FrameNode::ImageToVideo => "image_to_video",
            FrameNode::FirstLastToVideo => "first_last_to_video",
            FrameNode::Ti2vLatent => "ti2v_latent",
        }
    }

    /// The latent channels the node's VAE must have (Wan 2.1: 16, Wan 2.2: 48).
    fn z_dim(self) -> usize {
        match self {
            FrameNode::Ti2vLatent => 48,
            _ => 16,
        }
    }
}

impl Runtime {
    /// The latent channels and spatial factor of a VAE (or its plan).
    fn vae_shape(&self, id: ModelId) -> Result<(usize, usize)> {
        let m = self.model(id)?;
        let cfg = match m.planned() {
            Some(dry::Planned::Vae(cfg)) => cfg.clone(),
            Some(_) => return Err(RuntimeError::Input(m.not_a("a VAE"))),
            None => m.vae().map_err(RuntimeError::Input)?.kind(),
        };
        Ok((cfg.z_dim(), cfg.spatial_factor()))
    }

    /// One of the conditioning nodes on `vae`.
    pub fn frame_cond(
        &mut self,
        vae: ModelId,
        node: FrameNode,
        o: &FrameCondOptions,
        at: &str,
    ) -> Result<FrameCond> {
        let verb = node.name();
        let (z_dim, factor) = self.vae_shape(vae)?;
        if z_dim != node.z_dim() {
            let want = if node.z_dim() == 48 {
                "the Wan 2.2 VAE (48 channels, TI2V-5B's)"
            } else {
                "the Wan 2.1 VAE (16 channels, the A14B experts')"
            };
            return Err(RuntimeError::Input(format!(
                "{verb}: needs {want}, got a VAE with {z_dim} latent channels"
            )));
        }
        let (w, h, length) = (o.width, o.height, o.length);
        let step = factor * 2;
        if w == 0 || h == 0 || w % step != 0 || h % step != 0 || length == 0 {
            return Err(RuntimeError::Input(format!(
                "{verb}: width and height must be positive multiples of {step} and length at least 1, \
                 got {w}x{h}, length {length}"
            )));
        }
        for (key, img) in [("start_image", &o.start), ("end_image", &o.end)] {
            if let Some(i) = img {
                if i.rank() != 5 || i.dim(1).ok() != Some(3) {
                    return Err(RuntimeError::Input(format!(
                        "{verb}: {key} must be an image [1, 3, F, H, W] (load_image), got {:?}",
                        i.dims()
                    )));
                }
            }
        }
        let t = cond::latent_frames(length);
        let (lh, lw) = (h / factor, w / factor);
        let terr = |what: &'static str| tensor_err(format!("{verb}: {what}"));
        if node == FrameNode::Ti2vLatent {
            let Some(start) = &o.start else {
                let latent = Tensor::zeros((o.batch, z_dim, t, lh, lw), DType::F32, &Device::Cpu)
                    .map_err(terr("latent"))?;
                return Ok(FrameCond {
                    latent,
                    image_cond: None,
                    noise_mask: None,
                });
            };
            let s =
                cond::upscale_center(&start.narrow(0, 0, 1).map_err(terr("start_image"))?, w, h)
                    .and_then(|s| s.narrow(2, 0, s.dim(2)?.min(length)))
                    .map_err(terr("resize"))?;
            let z = self.encode(vae, &s, false, at)?;
            let (latent, mask) = cond::ti2v_latent(&z, t).map_err(terr("latent"))?;
            let latent = latent
                .repeat((o.batch, 1, 1, 1, 1))
                .map_err(terr("latent"))?;
            return Ok(FrameCond {
                latent,
                image_cond: None,
                noise_mask: Some(mask),
            });
        }
        let end = if node == FrameNode::FirstLastToVideo {
            o.end.as_ref()
        } else {
            None
        };
        if o.start.is_none() && end.is_none() {
            return Err(RuntimeError::Input(format!(
                "{verb}: needs start_image{}",
                if node == FrameNode::FirstLastToVideo {
                    " or end_image"
                } else {
                    ""
                }
            )));
        }
        let (video, ns, ne) =
            cond::pixel_video(o.start.as_ref(), end, w, h, length).map_err(terr("pixel video"))?;
        let z = self.encode(vae, &video, false, at)?;
        let mask = match node {
            FrameNode::FirstLastToVideo => cond::flf_mask(t, lh, lw, ns, ne),
            _ => cond::i2v_mask(t, lh, lw, ns),
        }
        .map_err(terr("mask"))?;
        let image_cond = cond::image_cond(&mask, &z).map_err(terr("image_cond"))?;
        let latent = Tensor::zeros((o.batch, z_dim, t, lh, lw), DType::F32, &Device::Cpu)
            .map_err(terr("latent"))?;
        Ok(FrameCond {
            latent,
            image_cond: Some(image_cond),
            noise_mask: None,
        })
    }
}
