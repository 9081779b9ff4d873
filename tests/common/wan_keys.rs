//! The key names and shapes of a Wan DiT checkpoint in the original layout,
//! for any config: full-size headers and tiny random models of every variant.
use baton::models::wan::WanConfig;
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// (name, dtype, shape) of every tensor of a Wan DiT in the original layout.
pub fn wan_keys(cfg: &WanConfig, clip_image: bool) -> Vec<(String, &'static str, Vec<usize>)> {
    let d = cfg.dim;
    let mut keys = baton::runtime::builtin::wan_tensor_shapes(cfg);
    if clip_image {
        // Wan 2.1 I2V: the CLIP image projection and per-block image k/v.
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
        for i in 0..cfg.num_layers {
            let b = format!("blocks.{i}.cross_attn.");
            for p in ["k_img", "v_img"] {
                keys.push((format!("{b}{p}.weight"), vec![d, d]));
                keys.push((format!("{b}{p}.bias"), vec![d]));
            }
            keys.push((format!("{b}norm_k_img.weight"), vec![d]));
        }
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
