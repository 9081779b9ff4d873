//! Key layouts of umT5 encoder checkpoints, mapped to one canonical naming.
//!
//! The canonical names are the HF ones without any prefix (`shared.weight`,
//! `encoder.block.N.layer.0.SelfAttention.q.weight`, ...): transformers,
//! diffusers' `text_encoder/` folders and ComfyUI's `umt5_xxl_*.safetensors`
//! all ship them, so most files need no renaming. Two other spellings are
//! translated here, once, when a file is opened:
//!
//! * a container prefix, as ComfyUI writes when it saves a text encoder inside
//!   a bigger checkpoint (`text_encoders.umt5xxl.transformer.`) or a module path
//!   (`umt5xxl.transformer.`, `text_encoder.`);
//! * the original Wan names (`token_embedding`, `blocks.N.attn.q`,
//!   `blocks.N.pos_embedding.embedding`, ... of `wan/modules/t5.py`), found in
//!   conversions of `models_t5_umt5-xxl-enc-bf16.pth`.

/// Container prefixes seen in front of the HF names, longest first so that a
/// shorter one never strips half of a longer one.
const PREFIXES: &[&str] = &[
    "text_encoders.umt5xxl.transformer.",
    "text_encoders.umt5xxl.",
    "umt5xxl.transformer.",
    "text_encoders.",
    "text_encoder.",
    "transformer.",
    "umt5xxl.",
    "model.",
];

/// Wan `t5.py` block sub-keys and their HF names (after `blocks.N.`).
const WAN_BLOCK: &[(&str, &str)] = &[
    ("norm1.weight", "layer.0.layer_norm.weight"),
    ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
    (
        "pos_embedding.embedding.weight",
        "layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    // `gate` is `Sequential(Linear, GELU)`: the GELU branch, HF's wi_0.
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
];

/// Strips a known container prefix, if any.
pub fn strip_prefix(key: &str) -> &str {
    PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .unwrap_or(key)
}

/// The canonical name of a file key, or `None` for keys the encoder does not
/// read: decoder and LM-head weights of full T5 files, ComfyUI's
/// `spiece_model` (the tokenizer, see [`super::tokenizer`]) and anything
/// unknown. `encoder.embed_tokens.weight` is transformers' alias of
/// `shared.weight` and maps to it; [`canonical_map`] resolves the pair.
pub fn to_canonical(key: &str) -> Option<String> {
    let key = strip_prefix(key);
    // An fp8_scaled weight's scale follows its weight's name.
    if let Some((stem, suffix)) = super::super::fp8_scale_stem(key) {
        let w = to_canonical(&format!("{stem}.weight"))?;
        return Some(format!("{}.{suffix}", w.strip_suffix(".weight")?));
    }
    if key == "shared.weight" || key == "encoder.embed_tokens.weight" {
        return Some("shared.weight".into());
    }
    if key == "encoder.final_layer_norm.weight" {
        return Some(key.into());
    }
    if let Some(rest) = key.strip_prefix("encoder.block.") {
        let (n, sub) = rest.split_once('.')?;
        n.parse::<usize>().ok()?;
        let known = WAN_BLOCK.iter().any(|(_, hf)| *hf == sub);
        return known.then(|| key.to_string());
    }
    if let Some(hf) = llama_cpp_name(key) {
        return Some(hf);
    }
    // Original Wan names.
    if key == "token_embedding.weight" {
        return Some("shared.weight".into());
    }
    if key == "norm.weight" {
        return Some("encoder.final_layer_norm.weight".into());
    }
    if let Some(rest) = key.strip_prefix("blocks.") {
        let (n, sub) = rest.split_once('.')?;
        n.parse::<usize>().ok()?;
        let hf = WAN_BLOCK.iter().find(|(wan, _)| *wan == sub)?.1;
        return Some(format!("encoder.block.{n}.{hf}"));
    }
    None
}

/// llama.cpp's T5-encoder names (`token_embd`, `enc.blk.N.attn_q`, ...),
/// what umT5 GGUFs (`CLIPLoaderGGUF`'s files) carry, as their HF names.
fn llama_cpp_name(key: &str) -> Option<String> {
    match key {
        "token_embd.weight" => return Some("shared.weight".into()),
        "enc.output_norm.weight" => return Some("encoder.final_layer_norm.weight".into()),
        _ => {}
    }
    let (n, sub) = key.strip_prefix("enc.blk.")?.split_once('.')?;
    n.parse::<usize>().ok()?;
    let hf = match sub {
        "attn_q.weight" => "layer.0.SelfAttention.q.weight",
        "attn_k.weight" => "layer.0.SelfAttention.k.weight",
        "attn_v.weight" => "layer.0.SelfAttention.v.weight",
        "attn_o.weight" => "layer.0.SelfAttention.o.weight",
        "attn_rel_b.weight" => "layer.0.SelfAttention.relative_attention_bias.weight",
        "attn_norm.weight" => "layer.0.layer_norm.weight",
        "ffn_norm.weight" => "layer.1.layer_norm.weight",
        "ffn_gate.weight" => "layer.1.DenseReluDense.wi_0.weight",
        "ffn_up.weight" => "layer.1.DenseReluDense.wi_1.weight",
        "ffn_down.weight" => "layer.1.DenseReluDense.wo.weight",
        _ => return None,
    };
    Some(format!("encoder.block.{n}.{hf}"))
}

/// Canonical name -> file key for every key the encoder reads. When a file
/// holds both `shared.weight` and its alias `encoder.embed_tokens.weight`,
/// `shared.weight` is used. Any other collision (two file keys for one
/// canonical name, e.g. a file that mixes layouts) is an error rather than a
/// silent choice.
pub fn canonical_map<'a>(
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut map = std::collections::BTreeMap::<String, String>::new();
    for key in keys {
        let Some(c) = to_canonical(key) else { continue };
        match map.get(&c) {
            None => {
                map.insert(c, key.to_string());
            }
            Some(prev) => {
                let alias = |k: &str| strip_prefix(k) == "encoder.embed_tokens.weight";
                if alias(key) {
                    continue;
                }
                if !alias(prev) {
                    return Err(format!(
                        "umt5: file keys '{prev}' and '{key}' both name '{c}'"
                    ));
                }
                map.insert(c, key.to_string());
            }
        }
    }
    Ok(map)
}

/// True when the keys hold a umT5 encoder: a token embedding and encoder
/// blocks that each carry their own relative-position bias table. Plain T5 /
/// T5 v1.1 (Flux's `t5xxl`) keeps the table in block 0 only and is refused,
/// because its other blocks would silently run without position bias.
pub fn is_umt5<'a>(keys: impl IntoIterator<Item = &'a str>) -> bool {
    let canon: std::collections::BTreeSet<String> =
        keys.into_iter().filter_map(to_canonical).collect();
    if !canon.contains("shared.weight") {
        return false;
    }
    let blocks: std::collections::BTreeSet<&str> = canon
        .iter()
        .filter_map(|k| k.strip_prefix("encoder.block.")?.split('.').next())
        .collect();
    !blocks.is_empty()
        && blocks.iter().all(|n| {
            canon.contains(&format!(
                "encoder.block.{n}.layer.0.SelfAttention.relative_attention_bias.weight"
            ))
        })
}

/// Rejects files whose weights the encoder would read wrongly: Wan's
/// `shared_pos` variant keeps one position table for all blocks, and loading
/// it as umT5 would not fail; it would produce wrong embeddings. (ComfyUI's
/// scaled-fp8 files are fine: each `scale_weight` maps beside its weight and
/// the checkpoint reader dequantises.)
pub fn check_supported<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    for key in keys {
        let k = strip_prefix(key);
        if k == "pos_embedding.embedding.weight" {
            return Err(format!(
                "umt5: '{key}' is a shared position table (plain T5 in Wan's layout), not umT5"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_wan_names_and_prefixes() {
        assert_eq!(
            to_canonical("blocks.3.ffn.gate.0.weight").as_deref(),
            Some("encoder.block.3.layer.1.DenseReluDense.wi_0.weight")
        );
        assert_eq!(
            to_canonical("blocks.0.pos_embedding.embedding.weight").as_deref(),
            Some("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        );
        assert_eq!(
            to_canonical(
                "text_encoders.umt5xxl.transformer.encoder.block.1.layer.0.SelfAttention.o.weight"
            )
            .as_deref(),
            Some("encoder.block.1.layer.0.SelfAttention.o.weight")
        );
        assert_eq!(
            to_canonical("umt5xxl.transformer.shared.weight").as_deref(),
            Some("shared.weight")
        );
        assert_eq!(
            to_canonical("norm.weight").as_deref(),
            Some("encoder.final_layer_norm.weight")
        );
        assert_eq!(to_canonical("spiece_model"), None);
        assert_eq!(
            to_canonical("decoder.block.0.layer.0.SelfAttention.q.weight"),
            None
        );
        assert_eq!(to_canonical("lm_head.weight"), None);
        // A Wan DiT block key is not a text-encoder key.
        assert_eq!(to_canonical("blocks.0.self_attn.q.weight"), None);
    }

    #[test]
    fn alias_and_collisions() {
        let m = canonical_map(["encoder.embed_tokens.weight", "shared.weight"]).unwrap();
        assert_eq!(m["shared.weight"], "shared.weight");
        let m = canonical_map(["shared.weight", "encoder.embed_tokens.weight"]).unwrap();
        assert_eq!(m["shared.weight"], "shared.weight");
        assert!(canonical_map(["shared.weight", "token_embedding.weight"]).is_err());
    }

    #[test]
    fn tells_umt5_from_t5() {
        let umt5 = [
            "shared.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
            "encoder.block.1.layer.0.SelfAttention.q.weight",
        ];
        assert!(is_umt5(umt5));
        let t5 = [
            "shared.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "encoder.block.1.layer.0.SelfAttention.q.weight",
        ];
        assert!(!is_umt5(t5));
        assert!(!is_umt5([
            "blocks.0.self_attn.q.weight",
            "head.head.weight"
        ]));
        assert!(check_supported(["scaled_fp8", "shared.weight"]).is_ok());
        assert!(check_supported(["pos_embedding.embedding.weight"]).is_err());
        assert_eq!(
            to_canonical("umt5xxl.transformer.blocks.0.attn.q.scale_weight").as_deref(),
            Some("encoder.block.0.layer.0.SelfAttention.q.scale_weight")
        );
        assert!(check_supported(umt5).is_ok());
    }
}
