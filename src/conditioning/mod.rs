//! Image conditioning as ComfyUI's Wan nodes build it: the pixel video a
//! VAE encodes (`WanImageToVideo`, `WanFirstLastFrameToVideo`,
//! `Wan22ImageToVideoLatent`), the masks, and what the DiT receives besides
//! `x` (`c_concat`: the 4-channel `1 - mask`, then the normalised image
//! latent). Pure tensor functions; the runtime's `conditioning` verbs run
//! the VAE between them. Images are baton's: [B, 3, F, H, W] in [-1, 1]
//! (ComfyUI's IMAGE `x` is `(x + 1) / 2` here, so its grey 0.5 is 0.0).

pub mod resize;

use candle_core::{DType, Device, Result, Tensor};

pub use resize::upscale_center;

/// Latent frames for `length` pixel frames: (length - 1) / 4 + 1.
pub fn latent_frames(length: usize) -> usize {
    length.saturating_sub(1) / 4 + 1
}

/// `image[:n]` (`first`) or `image[-n:]` along the frame axis.
fn frames(image: &Tensor, n: usize, first: bool) -> Result<Tensor> {
    let f = image.dim(2)?;
    let k = f.min(n);
    image.narrow(2, if first { 0 } else { f - k }, k)
}

/// The pixel video the node encodes: grey frames (0.0) with the resized
/// start frames first and the resized end frames last. Returns the video
/// [1, 3, length, H, W] and how many start and end frames it holds.
pub fn pixel_video(
    start: Option<&Tensor>,
    end: Option<&Tensor>,
    width: usize,
    height: usize,
    length: usize,
) -> Result<(Tensor, usize, usize)> {
    let grey = |n: usize| Tensor::zeros((1, 3, n, height, width), DType::F32, &Device::Cpu);
    let s = start
        .map(|s| upscale_center(&frames(&s.narrow(0, 0, 1)?, length, true)?, width, height))
        .transpose()?;
    let e = end
        .map(|e| upscale_center(&frames(&e.narrow(0, 0, 1)?, length, false)?, width, height))
        .transpose()?;
    let ns = s.as_ref().map_or(Ok(0), |s| s.dim(2))?;
    let ne = e.as_ref().map_or(Ok(0), |e| e.dim(2))?;
    let mut parts = Vec::new();
    let mut filled = 0;
    if let Some(s) = s {
        parts.push(s.to_device(&Device::Cpu)?);
        filled += ns;
    }
    let middle = length.saturating_sub(filled + ne);
    if middle > 0 {
        parts.push(grey(middle)?);
    }
    if let Some(e) = e {
        // `image[-n_e:] = end` overwrites start frames when they overlap.
        let keep = length - ne;
        if filled > keep {
            let t = Tensor::cat(&parts, 2)?.narrow(2, 0, keep)?;
            parts = vec![t];
        }
        parts.push(e.to_device(&Device::Cpu)?);
    }
    Ok((Tensor::cat(&parts, 2)?, ns, ne))
}

/// `WanImageToVideo`'s mask, as the DiT gets it: 4 equal channels of
/// `1 - concat_mask`, 1 on the latent frames the `n_start` images give.
pub fn i2v_mask(t: usize, h: usize, w: usize, n_start: usize) -> Result<Tensor> {
    let given = if n_start == 0 {
        0
    } else {
        (n_start - 1) / 4 + 1
    };
    let per_frame: Vec<f32> = (0..t).map(|f| if f < given { 1.0 } else { 0.0 }).collect();
    Tensor::from_vec(per_frame, (1, 1, t, 1, 1), &Device::Cpu)?
        .broadcast_as((1, 4, t, h, w))?
        .contiguous()
}

/// `WanFirstLastFrameToVideo`'s mask as the DiT gets it (`1 - mask`): the
/// pixel-frame mask of 4T entries (the first pixel frame counts four times)
/// viewed as [T, 4] and moved to channels: channel c of latent frame f is
/// entry 4f + c.
pub fn flf_mask(t: usize, h: usize, w: usize, n_start: usize, n_end: usize) -> Result<Tensor> {
    let n = 4 * t;
    let mut given = vec![0f32; n];
    if n_start > 0 {
        given[..(n_start + 3).min(n)].fill(1.0);
    }
    given[n - n_end.min(n)..].fill(1.0);
    Tensor::from_vec(given, (1, t, 4, 1, 1), &Device::Cpu)?
        .transpose(1, 2)?
        .broadcast_as((1, 4, t, h, w))?
        .contiguous()
}

/// ComfyUI's `c_concat`: cat(mask (4 channels, 1 = given), normalised image latent).
pub fn image_cond(mask: &Tensor, latent: &Tensor) -> Result<Tensor> {
    Tensor::cat(
        &[mask, &latent.to_dtype(DType::F32)?.to_device(&Device::Cpu)?],
        1,
    )
}

/// `Wan22ImageToVideoLatent` in the sampler's space: the normalised start
/// latent `z` on its frames, 0 (the format's mean) on the others; and the
/// noise mask [1, 1, T, h, w], 0 on the kept frames.
pub fn ti2v_latent(z: &Tensor, t: usize) -> Result<(Tensor, Tensor)> {
    let (b, c, k, h, w) = z.dims5()?;
    let k = k.min(t);
    let z = z
        .narrow(2, 0, k)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?;
    let mut parts = vec![z];
    if t > k {
        parts.push(Tensor::zeros(
            (b, c, t - k, h, w),
            DType::F32,
            &Device::Cpu,
        )?);
    }
    let latent = Tensor::cat(&parts, 2)?;
    let mask: Vec<f32> = (0..t).map(|f| if f < k { 0.0 } else { 1.0 }).collect();
    let mask = Tensor::from_vec(mask, (1, 1, t, 1, 1), &Device::Cpu)?
        .broadcast_as((1, 1, t, h, w))?
        .contiguous()?;
    Ok((latent, mask))
}

/// The timestep of each latent frame under a noise mask: the mask's mean
/// over channels and pixels of that frame, times t (ComfyUI's
/// `WAN22.process_timestep`; 0 on a kept frame).
pub fn frame_scales(mask: &Tensor) -> Result<Vec<f32>> {
    let m = mask.to_dtype(DType::F32)?.narrow(0, 0, 1)?;
    let t = m.dim(2)?;
    m.transpose(1, 2)?
        .contiguous()?
        .reshape((t, ()))?
        .mean(1)?
        .to_vec1()
}
