//! Key layouts of Wan 2.1 VAE checkpoints, mapped to the original names.
//!
//! Model code reads the names of Wan's `WanVAE_` (`vae2_1.py`), which ComfyUI's
//! `wan_2.1_vae.safetensors` also uses. diffusers' `AutoencoderKLWan` names are
//! translated here, once, when the checkpoint is opened; so are the prefixes
//! that checkpoints bundling a VAE put in front of its keys.
//!
//! The decoder's flat `upsamples.N` index depends on `num_res_blocks`
//! (N = i * (nrb + 2) + j), which a diffusers key alone does not tell:
//! [`to_original`] assumes Wan 2.1's 2, [`canonical_names`] reads it from the keys.

use std::collections::BTreeMap;

/// Prefixes of VAE keys inside bundled or ComfyUI-saved files.
const PREFIXES: &[&str] = &["first_stage_model.", "vae."];

/// `num_res_blocks` of every published Wan 2.1-family VAE.
pub const WAN21_NUM_RES_BLOCKS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeLayout {
    /// Wan's `WanVAE_` names, also ComfyUI's.
    Original,
    /// diffusers `AutoencoderKLWan`.
    Diffusers,
}

impl VaeLayout {
    pub fn name(self) -> &'static str {
        match self {
            VaeLayout::Original => "original",
            VaeLayout::Diffusers => "diffusers",
        }
    }
}

/// Strips a bundling prefix, if any.
pub fn strip_prefix(key: &str) -> &str {
    PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .unwrap_or(key)
}

/// Translates a diffusers key to the original name, assuming
/// `num_res_blocks` = 2 (Wan 2.1); `None` for keys with no counterpart.
pub fn to_original(key: &str) -> Option<String> {
    to_original_with(key, WAN21_NUM_RES_BLOCKS)
}

/// [`to_original`] for a given `num_res_blocks`.
pub fn to_original_with(key: &str, num_res_blocks: usize) -> Option<String> {
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
        if k > 1 {
            return None;
        }
        return Some(format!("{side}.middle.{}.{}", 2 * k, resnet_key(r)?));
    }
    if side == "encoder" {
        // A flat list with the original's own indices; a block's inner names
        // tell its kind.
        let (n, r) = index(rest.strip_prefix("down_blocks.")?)?;
        let inner = resnet_key(r)
            .or_else(|| attention_key(r))
            .or_else(|| resample_key(r))?;
        return Some(format!("encoder.downsamples.{n}.{inner}"));
    }
    let (i, r) = index(rest.strip_prefix("up_blocks.")?)?;
    let per_stage = num_res_blocks + 2;
    if let Some(r) = r.strip_prefix("resnets.") {
        let (j, r) = index(r)?;
        if j > num_res_blocks {
            return None;
        }
        return Some(format!(
            "decoder.upsamples.{}.{}",
            i * per_stage + j,
            resnet_key(r)?
        ));
    }
    let r = r.strip_prefix("upsamplers.0.")?;
    Some(format!(
        "decoder.upsamples.{}.{}",
        i * per_stage + num_res_blocks + 1,
        resample_key(r)?
    ))
}

/// Splits `N.rest` into (N, rest).
pub(super) fn index(s: &str) -> Option<(usize, &str)> {
    let (n, r) = s.split_once('.')?;
    Some((n.parse().ok()?, r))
}

/// Residual block: diffusers names its layers, the original indexes a Sequential
/// (RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d).
pub(super) fn resnet_key(r: &str) -> Option<String> {
    const RES: &[(&str, &str)] = &[
        ("norm1.", "residual.0."),
        ("conv1.", "residual.2."),
        ("norm2.", "residual.3."),
        ("conv2.", "residual.6."),
        ("conv_shortcut.", "shortcut."),
    ];
    RES.iter()
        .find_map(|(from, to)| r.strip_prefix(from).map(|x| format!("{to}{x}")))
}

/// Attention and resample blocks keep their inner names.
pub(super) fn attention_key(r: &str) -> Option<String> {
    ["norm.", "to_qkv.", "proj."]
        .iter()
        .any(|p| r.starts_with(p))
        .then(|| r.to_string())
}

pub(super) fn resample_key(r: &str) -> Option<String> {
    ["resample.1.", "time_conv."]
        .iter()
        .any(|p| r.starts_with(p))
        .then(|| r.to_string())
}

/// Guesses the layout from characteristic keys (after prefix stripping).
pub fn detect_layout<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<VaeLayout> {
    let mut found = None;
    for k in keys {
        match strip_prefix(k) {
            "decoder.conv1.weight" | "conv2.weight" => return Some(VaeLayout::Original),
            "decoder.conv_in.weight" | "post_quant_conv.weight" => {
                found = Some(VaeLayout::Diffusers)
            }
            _ => {}
        }
    }
    found
}

/// `num_res_blocks` of a diffusers-layout file: its first decoder stage has
/// nrb + 1 residual blocks.
pub fn diffusers_num_res_blocks<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<usize> {
    keys.into_iter()
        .filter_map(|k| {
            let r = strip_prefix(k).strip_prefix("decoder.up_blocks.0.resnets.")?;
            index(r).map(|(j, _)| j)
        })
        .max()
}

/// Maps every key of a file to its canonical (original) name: canonical ->
/// file key. Strips bundling prefixes, translates diffusers names; fails
/// naming the key when one has no counterpart or two keys collide.
pub fn canonical_names<'a>(
    keys: impl IntoIterator<Item = &'a str> + Clone,
) -> Result<BTreeMap<String, String>, String> {
    let layout = detect_layout(keys.clone())
        .ok_or("wan vae: neither original nor diffusers VAE keys found")?;
    let nrb = match layout {
        VaeLayout::Diffusers => diffusers_num_res_blocks(keys.clone())
            .ok_or("wan vae: no decoder.up_blocks.0.resnets.* keys")?,
        VaeLayout::Original => 0,
    };
    let mut out = BTreeMap::new();
    for k in keys {
        let s = strip_prefix(k);
        let canon = match layout {
            VaeLayout::Original => s.to_string(),
            VaeLayout::Diffusers => to_original_with(s, nrb).ok_or_else(|| {
                format!("wan vae: diffusers key `{k}` has no original counterpart")
            })?,
        };
        if let Some(prev) = out.insert(canon.clone(), k.to_string()) {
            return Err(format!(
                "wan vae: keys `{prev}` and `{k}` both map to `{canon}`"
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_blocks_by_position() {
        assert_eq!(
            to_original("decoder.up_blocks.1.resnets.0.conv_shortcut.weight").as_deref(),
            Some("decoder.upsamples.4.shortcut.weight")
        );
        assert_eq!(
            to_original("decoder.up_blocks.2.upsamplers.0.resample.1.bias").as_deref(),
            Some("decoder.upsamples.11.resample.1.bias")
        );
        assert_eq!(
            to_original_with("decoder.up_blocks.1.upsamplers.0.time_conv.weight", 1).as_deref(),
            Some("decoder.upsamples.5.time_conv.weight")
        );
        assert_eq!(
            to_original("encoder.down_blocks.5.time_conv.bias").as_deref(),
            Some("encoder.downsamples.5.time_conv.bias")
        );
        assert_eq!(
            to_original("encoder.mid_block.resnets.1.norm2.gamma").as_deref(),
            Some("encoder.middle.2.residual.3.gamma")
        );
        assert_eq!(
            to_original("decoder.up_blocks.0.resnets.3.norm1.gamma"),
            None
        );
        assert_eq!(to_original("encoder.down_blocks.0.avg_shortcut.x"), None);
        assert_eq!(
            strip_prefix("first_stage_model.decoder.conv1.weight"),
            "decoder.conv1.weight"
        );
    }
}
