//! The Wan 2.2 VAE's key layouts: diffusers names to the original / ComfyUI
//! ones (`encoder.downsamples.i.downsamples.j`, `decoder.upsamples.i.upsamples.j`:
//! one nested list per stage), and its config read back from the shapes.

use super::layout::{attention_key, index, resample_key, resnet_key};
use std::collections::BTreeMap;

/// A diffusers key of the Wan 2.2 VAE as its original name, for
/// `num_res_blocks` residual blocks per encoder stage; `None` for keys with
/// no counterpart.
pub fn to_original22(key: &str, nrb: usize) -> Option<String> {
    const TOP: &[(&str, &str)] = &[
        ("quant_conv.", "conv1."),
        ("post_quant_conv.", "conv2."),
        ("encoder.conv_in.", "encoder.conv1."),
        ("decoder.conv_in.", "decoder.conv1."),
        ("encoder.norm_out.", "encoder.head.0."),
        ("decoder.norm_out.", "decoder.head.0."),
        ("encoder.conv_out.", "encoder.head.2."),
        ("decoder.conv_out.", "decoder.head.2."),
    ];
    if let Some(m) = TOP
        .iter()
        .find_map(|(from, to)| key.strip_prefix(from).map(|r| format!("{to}{r}")))
    {
        return Some(m);
    }
    let (side, rest) = key.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    if let Some(rest) = rest.strip_prefix("mid_block.") {
        if let Some(r) = rest.strip_prefix("attentions.0.") {
            return attention_key(r).map(|r| format!("{side}.middle.1.{r}"));
        }
        let (k, r) = index(rest.strip_prefix("resnets.")?)?;
        return (k <= 1).then(|| Some(format!("{side}.middle.{}.{}", 2 * k, resnet_key(r)?)))?;
    }
    let (blocks, list, sampler, last) = if side == "encoder" {
        ("down_blocks.", "downsamples", "downsampler.", nrb)
    } else {
        ("up_blocks.", "upsamples", "upsampler.", nrb + 1)
    };
    let (i, r) = index(rest.strip_prefix(blocks)?)?;
    if let Some(r) = r.strip_prefix("resnets.") {
        let (j, r) = index(r)?;
        return Some(format!("{side}.{list}.{i}.{list}.{j}.{}", resnet_key(r)?));
    }
    let r = r.strip_prefix(sampler)?;
    Some(format!(
        "{side}.{list}.{i}.{list}.{last}.{}",
        resample_key(r)?
    ))
}

/// Whether (prefix-stripped) keys are a Wan 2.2 VAE's, in either layout.
pub fn is_wan22_vae<'a>(keys: impl IntoIterator<Item = &'a str>) -> bool {
    keys.into_iter().any(|k| {
        k.starts_with("decoder.upsamples.0.upsamples.0.residual.")
            || k.starts_with("decoder.up_blocks.0.upsampler.")
            || k.starts_with("encoder.down_blocks.0.downsampler.")
    })
}

/// The residual blocks per encoder stage of diffusers-layout keys.
pub fn diffusers_nrb<'a>(keys: impl IntoIterator<Item = &'a str>) -> usize {
    keys.into_iter()
        .filter_map(|k| k.strip_prefix("encoder.down_blocks.0.resnets."))
        .filter_map(|r| index(r).map(|(j, _)| j + 1))
        .max()
        .unwrap_or(0)
}

/// Hyper-parameters of the Wan 2.2 VAE (`comfy.ldm.wan.vae2_2.WanVAE`).
#[derive(Debug, Clone, PartialEq)]
pub struct Wan22VaeConfig {
    /// Encoder base width (`dim`: 160 in TI2V-5B's VAE).
    pub enc_dim: usize,
    /// Decoder base width (`dec_dim`: 256).
    pub dec_dim: usize,
    /// Latent channels (48).
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Per encoder stage boundary: whether it halves time.
    pub temporal_downsample: Vec<bool>,
}

impl Wan22VaeConfig {
    /// Encoder widths: conv1 output then each stage's.
    pub fn encoder_dims(&self) -> Vec<usize> {
        std::iter::once(1)
            .chain(self.dim_mult.iter().copied())
            .map(|u| u * self.enc_dim)
            .collect()
    }

    /// Decoder widths: conv1 output then each stage's.
    pub fn decoder_dims(&self) -> Vec<usize> {
        let last = *self.dim_mult.last().unwrap_or(&1);
        std::iter::once(last)
            .chain(self.dim_mult.iter().rev().copied())
            .map(|u| u * self.dec_dim)
            .collect()
    }

    /// Pixels per latent pixel: patchify (2) times 2 per stage boundary.
    pub fn spatial_factor(&self) -> usize {
        2 << (self.dim_mult.len() - 1)
    }

    /// Video frames per latent frame after the first.
    pub fn temporal_factor(&self) -> usize {
        1 << self.temporal_downsample.iter().filter(|&&t| t).count()
    }

    /// Reads the config from original-layout shapes.
    pub fn infer(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Self, String> {
        let get = |k: &str| {
            shapes
                .get(k)
                .ok_or_else(|| format!("wan 2.2 vae: missing tensor `{k}`"))
        };
        let first = |k: &str| -> Result<usize, String> { Ok(*get(k)?.first().unwrap_or(&0)) };
        let enc_dim = first("encoder.conv1.weight")?;
        let z_dim = first("conv2.weight")?;
        let res = |i: usize, j: usize| {
            format!("encoder.downsamples.{i}.downsamples.{j}.residual.2.weight")
        };
        let stages = (0..)
            .take_while(|&i| shapes.contains_key(&res(i, 0)))
            .count();
        let nrb = (0..)
            .take_while(|&j| shapes.contains_key(&res(0, j)))
            .count();
        if enc_dim == 0 || stages < 2 || nrb == 0 {
            return Err(format!(
                "wan 2.2 vae: {stages} encoder stages with {nrb} residual blocks, width {enc_dim}"
            ));
        }
        let dim_mult = (0..stages)
            .map(|i| first(&res(i, 0)).map(|w| w / enc_dim))
            .collect::<Result<Vec<_>, _>>()?;
        let temporal_downsample = (0..stages - 1)
            .map(|i| {
                shapes.contains_key(&format!(
                    "encoder.downsamples.{i}.downsamples.{nrb}.time_conv.weight"
                ))
            })
            .collect();
        let dec_dim = first("decoder.conv1.weight")? / dim_mult[stages - 1].max(1);
        Ok(Self {
            enc_dim,
            dec_dim,
            z_dim,
            dim_mult,
            num_res_blocks: nrb,
            temporal_downsample,
        })
    }
}

/// Either Wan VAE's config: what a plan keeps and what `inspect` reports.
#[derive(Debug, Clone, PartialEq)]
pub enum VaeKind {
    /// Wan 2.1 (also the A14B experts' VAE): 16 channels, 8x spatial.
    V21(super::WanVaeConfig),
    /// Wan 2.2 (TI2V-5B's): 48 channels, 16x spatial.
    V22(Wan22VaeConfig),
}

impl VaeKind {
    pub fn z_dim(&self) -> usize {
        match self {
            VaeKind::V21(c) => c.z_dim,
            VaeKind::V22(c) => c.z_dim,
        }
    }

    pub fn spatial_factor(&self) -> usize {
        match self {
            VaeKind::V21(c) => c.spatial_factor(),
            VaeKind::V22(c) => c.spatial_factor(),
        }
    }

    /// The decoder's width at full resolution (what its working memory scales with).
    pub fn full_res_width(&self) -> usize {
        match self {
            VaeKind::V21(c) => c.base_dim,
            VaeKind::V22(c) => c.dec_dim,
        }
    }
}
