//! LoRA key names: which part of which model weight a tensor is.
//!
//! Four layouts reach users (kohya/ComfyUI, original-layout PEFT, diffusers
//! PEFT, musubi-tuner); all of them are mapped here onto the canonical
//! original Wan module names (`blocks.0.self_attn.q`) the model code reads.

use crate::checkpoint::layout::{diffusers_to_original, strip_prefix};
use std::collections::{BTreeSet, HashMap};

/// What a LoRA tensor holds for its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `lora_down` / `lora_A`: [rank, in].
    Down,
    /// `lora_up` / `lora_B`: [out, rank].
    Up,
    /// The 0-d `alpha`; absent means alpha = rank.
    Alpha,
    /// A full-weight delta.
    Diff,
    /// A bias delta.
    DiffB,
}

/// Suffixes in the order they must be tried (`.diff_b` before `.diff`).
const PARTS: &[(&str, Part)] = &[
    (".lora_down.weight", Part::Down),
    (".lora_A.weight", Part::Down),
    (".lora_up.weight", Part::Up),
    (".lora_B.weight", Part::Up),
    (".alpha", Part::Alpha),
    (".diff_b", Part::DiffB),
    (".diff", Part::Diff),
];

/// Splits `diffusion_model.blocks.0.ffn.0.lora_up.weight` into the module
/// (`diffusion_model.blocks.0.ffn.0`) and its part.
pub fn split_part(key: &str) -> Option<(&str, Part)> {
    PARTS
        .iter()
        .find_map(|(suffix, part)| key.strip_suffix(suffix).map(|m| (m, *part)))
}

/// The model's modules (weight names without `.weight`), for resolving LoRA
/// module names against what really exists rather than guessing.
pub struct Modules {
    exact: BTreeSet<String>,
    /// musubi's `blocks_0_self_attn_q` -> `blocks.0.self_attn.q`; `None`
    /// when two modules flatten to the same string.
    flat: HashMap<String, Option<String>>,
}

impl Modules {
    pub fn new<'a>(weight_names: impl Iterator<Item = &'a str>) -> Self {
        let exact: BTreeSet<String> = weight_names
            .filter_map(|n| n.strip_suffix(".weight"))
            .map(str::to_string)
            .collect();
        let mut flat: HashMap<String, Option<String>> = HashMap::new();
        for m in &exact {
            flat.entry(m.replace('.', "_"))
                .and_modify(|v| *v = None)
                .or_insert_with(|| Some(m.clone()));
        }
        Self { exact, flat }
    }

    /// The canonical module a LoRA module name refers to, if the model has it.
    pub fn resolve(&self, module: &str) -> Option<String> {
        if let Some(rest) = module.strip_prefix("lora_unet_") {
            return self.flat.get(rest).cloned().flatten();
        }
        if let Some(rest) = module.strip_prefix("transformer.") {
            return self
                .diffusers_name(rest)
                .or_else(|| self.exact.contains(rest).then(|| rest.to_string()));
        }
        let original = strip_prefix(module);
        if self.exact.contains(original) {
            return Some(original.to_string());
        }
        self.diffusers_name(original)
    }

    /// The layout mapper works on full weight keys, so the module gets a
    /// `.weight` suffix for the trip and loses it after.
    fn diffusers_name(&self, module: &str) -> Option<String> {
        let key = diffusers_to_original(&format!("{module}.weight"))?;
        let m = key.strip_suffix(".weight")?;
        self.exact.contains(m).then(|| m.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules() -> Modules {
        let names = [
            "blocks.0.self_attn.q.weight",
            "blocks.0.cross_attn.o.weight",
            "blocks.1.ffn.2.weight",
            "blocks.1.ffn.2.bias",
            "head.head.weight",
        ];
        Modules::new(names.into_iter())
    }

    #[test]
    fn every_layout_resolves_to_the_original_name() {
        let m = modules();
        let cases = [
            (
                "diffusion_model.blocks.0.self_attn.q",
                "blocks.0.self_attn.q",
            ),
            ("transformer.blocks.0.attn1.to_q", "blocks.0.self_attn.q"),
            (
                "transformer.blocks.0.attn2.to_out.0",
                "blocks.0.cross_attn.o",
            ),
            ("transformer.blocks.1.ffn.net.2", "blocks.1.ffn.2"),
            ("lora_unet_blocks_1_ffn_2", "blocks.1.ffn.2"),
            ("lora_unet_blocks_0_cross_attn_o", "blocks.0.cross_attn.o"),
            ("model.diffusion_model.head.head", "head.head"),
            ("blocks.0.attn1.to_q", "blocks.0.self_attn.q"),
        ];
        for (key, want) in cases {
            assert_eq!(m.resolve(key).as_deref(), Some(want), "{key}");
        }
        assert_eq!(m.resolve("diffusion_model.blocks.0.cross_attn.k_img"), None);
        assert_eq!(m.resolve("lora_unet_blocks_7_ffn_2"), None);
    }

    #[test]
    fn parts_are_split_longest_suffix_first() {
        assert_eq!(split_part("a.b.diff_b"), Some(("a.b", Part::DiffB)));
        assert_eq!(split_part("a.b.diff"), Some(("a.b", Part::Diff)));
        assert_eq!(split_part("a.lora_B.weight"), Some(("a", Part::Up)));
        assert_eq!(split_part("a.weight"), None);
    }
}
