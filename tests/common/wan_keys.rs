//! The key names and shapes of a Wan DiT checkpoint in the original layout,
//! for any config: full-size headers and tiny random models of every variant.
use baton::models::wan::WanConfig;
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// (name, dtype, shape) of every tensor of a Wan DiT in the original layout.
pub fn wan_keys(cfg: &WanConfig, clip_image: bool) -> Vec<(String, &'static str, Vec<usize>)> {
    let (d, f) = (cfg.dim, cfg.ffn_dim);
    let [pt, ph, pw] = cfg.patch_size;
    let mut keys: Vec<(String, Vec<usize>)> = vec![
        (
            "patch_embedding.weight".into(),
            vec![d, cfg.in_dim, pt, ph, pw],
        ),
        ("patch_embedding.bias".into(), vec![d]),
        ("text_embedding.0.weight".into(), vec![d, cfg.text_dim]),
        ("text_embedding.0.bias".into(), vec![d]),
        ("text_embedding.2.weight".into(), vec![d, d]),
        ("text_embedding.2.bias".into(), vec![d]),
        ("time_embedding.0.weight".into(), vec![d, cfg.freq_dim]),
        ("time_embedding.0.bias".into(), vec![d]),
        ("time_embedding.2.weight".into(), vec![d, d]),
        ("time_embedding.2.bias".into(), vec![d]),
        ("time_projection.1.weight".into(), vec![6 * d, d]),
        ("time_projection.1.bias".into(), vec![6 * d]),
        ("head.head.weight".into(), vec![cfg.patch_features_out(), d]),
        ("head.head.bias".into(), vec![cfg.patch_features_out()]),
        ("head.modulation".into(), vec![1, 2, d]),
    ];
    if clip_image {
        for (k, s) in [
            ("img_emb.proj.0.weight", vec![1280]),
            ("img_emb.proj.0.bias", vec![1280]),
            ("img_emb.proj.1.weight", vec![1280, 1280]),
            ("img_emb.proj.1.bias", vec![1280]),
            ("img_emb.proj.3.weight", vec![d, 1280]),
            ("img_emb.proj.3.bias", vec![d]),
            ("img_emb.proj.4.weight", vec![d]),
            ("img_emb.proj.4.bias", vec![d]),
        ] {
            keys.push((k.into(), s));
        }
    }
    for i in 0..cfg.num_layers {
        let b = format!("blocks.{i}.");
        for attn in ["self_attn", "cross_attn"] {
            for p in ["q", "k", "v", "o"] {
                keys.push((format!("{b}{attn}.{p}.weight"), vec![d, d]));
                keys.push((format!("{b}{attn}.{p}.bias"), vec![d]));
            }
            keys.push((format!("{b}{attn}.norm_q.weight"), vec![d]));
            keys.push((format!("{b}{attn}.norm_k.weight"), vec![d]));
        }
        if clip_image {
            for p in ["k_img", "v_img"] {
                keys.push((format!("{b}cross_attn.{p}.weight"), vec![d, d]));
                keys.push((format!("{b}cross_attn.{p}.bias"), vec![d]));
            }
            keys.push((format!("{b}cross_attn.norm_k_img.weight"), vec![d]));
        }
        keys.push((format!("{b}norm3.weight"), vec![d]));
        keys.push((format!("{b}norm3.bias"), vec![d]));
        keys.push((format!("{b}ffn.0.weight"), vec![f, d]));
        keys.push((format!("{b}ffn.0.bias"), vec![f]));
        keys.push((format!("{b}ffn.2.weight"), vec![d, f]));
        keys.push((format!("{b}ffn.2.bias"), vec![d]));
        keys.push((format!("{b}modulation"), vec![1, 6, d]));
    }
    keys.into_iter().map(|(k, s)| (k, "BF16", s)).collect()
}

/// Seeded random weights for `cfg` (std ~0.06, so activations stay
/// tame); norm weights around 1. Deterministic across runs (xorshift).
pub fn random_wan(cfg: &WanConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    };
    wan_keys(cfg, false)
        .into_iter()
        .map(|(k, _, shape)| {
            let n: usize = shape.iter().product();
            let one = if k.contains("norm") && k.ends_with(".weight") {
                1.0
            } else {
                0.0
            };
            let v: Vec<f32> = (0..n).map(|_| one + next()).collect();
            (
                k,
                Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect()
}
