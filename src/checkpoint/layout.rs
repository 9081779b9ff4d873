//! Key layouts of Wan DiT checkpoints, mapped to one canonical naming.
//!
//! Model code reads the original Wan / ComfyUI names (`blocks.N.self_attn.q`).
//! Files in the diffusers layout (`blocks.N.attn1.to_q`) are translated here,
//! once, when the checkpoint is opened; so is a ComfyUI
//! `model.diffusion_model.` prefix. Nothing else in baton knows about layouts.

/// Prefixes that ComfyUI-saved files put in front of the original names.
const PREFIXES: &[&str] = &["model.diffusion_model.", "diffusion_model."];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Wan-AI's own key names, also used by Comfy-Org's repackaged files.
    Original,
    /// diffusers `WanTransformer3DModel`.
    Diffusers,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Original => "original",
            Layout::Diffusers => "diffusers",
        }
    }
}

/// Strips a ComfyUI prefix, if any.
pub fn strip_prefix(key: &str) -> &str {
    PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .unwrap_or(key)
}

/// Translates a diffusers key to the original name; `None` for keys with no
/// counterpart in the text-to-video model.
pub fn diffusers_to_original(key: &str) -> Option<String> {
    const TOP: &[(&str, &str)] = &[
        ("scale_shift_table", "head.modulation"),
        ("proj_out.", "head.head."),
        ("patch_embedding.", "patch_embedding."),
        (
            "condition_embedder.time_embedder.linear_1.",
            "time_embedding.0.",
        ),
        (
            "condition_embedder.time_embedder.linear_2.",
            "time_embedding.2.",
        ),
        ("condition_embedder.time_proj.", "time_projection.1."),
        (
            "condition_embedder.text_embedder.linear_1.",
            "text_embedding.0.",
        ),
        (
            "condition_embedder.text_embedder.linear_2.",
            "text_embedding.2.",
        ),
    ];
    if let Some(rest) = key.strip_prefix("blocks.") {
        let (n, rest) = rest.split_once('.')?;
        n.parse::<usize>().ok()?;
        let mapped = block_key(rest)?;
        return Some(format!("blocks.{n}.{mapped}"));
    }
    TOP.iter().find_map(|(from, to)| {
        if from.ends_with('.') {
            key.strip_prefix(from).map(|r| format!("{to}{r}"))
        } else {
            (key == *from).then(|| to.to_string())
        }
    })
}

fn block_key(rest: &str) -> Option<String> {
    const BLOCK: &[(&str, &str)] = &[
        ("attn1.to_q.", "self_attn.q."),
        ("attn1.to_k.", "self_attn.k."),
        ("attn1.to_v.", "self_attn.v."),
        ("attn1.to_out.0.", "self_attn.o."),
        ("attn1.norm_q.", "self_attn.norm_q."),
        ("attn1.norm_k.", "self_attn.norm_k."),
        ("attn2.to_q.", "cross_attn.q."),
        ("attn2.to_k.", "cross_attn.k."),
        ("attn2.to_v.", "cross_attn.v."),
        ("attn2.to_out.0.", "cross_attn.o."),
        ("attn2.norm_q.", "cross_attn.norm_q."),
        ("attn2.norm_k.", "cross_attn.norm_k."),
        // diffusers' norm2 (affine, before cross-attention) is the original norm3.
        ("norm2.", "norm3."),
        ("ffn.net.0.proj.", "ffn.0."),
        ("ffn.net.2.", "ffn.2."),
    ];
    if rest == "scale_shift_table" {
        return Some("modulation".into());
    }
    BLOCK
        .iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|r| format!("{to}{r}")))
}

/// Guesses the layout from characteristic keys (after prefix stripping).
pub fn detect_layout<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> Option<Layout> {
    let has = |k: &str| keys.clone().any(|x| x == k);
    if has("blocks.0.self_attn.q.weight") || has("head.head.weight") {
        Some(Layout::Original)
    } else if has("blocks.0.attn1.to_q.weight") || has("condition_embedder.time_proj.weight") {
        Some(Layout::Diffusers)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_confusable_norms_and_tables() {
        assert_eq!(
            diffusers_to_original("blocks.3.norm2.weight").as_deref(),
            Some("blocks.3.norm3.weight")
        );
        assert_eq!(
            diffusers_to_original("blocks.3.scale_shift_table").as_deref(),
            Some("blocks.3.modulation")
        );
        assert_eq!(
            diffusers_to_original("scale_shift_table").as_deref(),
            Some("head.modulation")
        );
        assert_eq!(
            diffusers_to_original("blocks.0.attn2.to_out.0.bias").as_deref(),
            Some("blocks.0.cross_attn.o.bias")
        );
        assert_eq!(
            diffusers_to_original("blocks.0.attn2.add_k_proj.weight"),
            None
        );
        assert_eq!(
            strip_prefix("model.diffusion_model.head.head.bias"),
            "head.head.bias"
        );
    }
}
