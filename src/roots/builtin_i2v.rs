//! The built-in image-to-video models: `wan-tiny-i2v-high` / `-low` (the
//! Wan 2.2 I2V-A14B experts' shape: 36 input channels, 16 out),
//! `wan-tiny-ti2v` (TI2V-5B's: 48 in and out), `wan22-vae-tiny` (the Wan
//! 2.2 VAE's structure at tiny widths) and a rank-4 LoRA for each I2V expert
//! (`lora-tiny-i2v-high` / `-low`, ComfyUI/kohya keys). Seeded random
//! weights, like the rest of the built-in set.

use super::{tiny_config, write_seeded, Init, Spec};
use crate::models::wan::WanConfig;
use crate::models::wan_vae::Wan22VaeConfig;
use std::path::Path;

/// The I2V experts: the built-in T2V architecture with I2V's 36 input channels.
pub fn i2v_config() -> WanConfig {
    WanConfig {
        in_dim: 36,
        ..tiny_config()
    }
}

/// TI2V-5B's shape: 48 latent channels in and out.
pub fn ti2v_config() -> WanConfig {
    WanConfig {
        in_dim: 48,
        out_dim: 48,
        ..tiny_config()
    }
}

/// The Wan 2.2 VAE's structure (z_dim 48, 16x spatial) at widths 8 / 16.
pub fn vae22_config() -> Wan22VaeConfig {
    Wan22VaeConfig {
        enc_dim: 8,
        dec_dim: 16,
        z_dim: 48,
        dim_mult: vec![1, 2, 4, 4],
        num_res_blocks: 2,
        temporal_downsample: vec![false, true, true],
    }
}

fn weight(key: String, shape: Vec<usize>) -> Spec {
    let fan_in = shape[1..].iter().product::<usize>().max(1);
    (key, shape, Init::Weight { fan_in })
}

fn conv(v: &mut Vec<Spec>, name: &str, out: usize, inp: usize, k: &[usize]) {
    let mut shape = vec![out, inp];
    shape.extend_from_slice(k);
    v.push(weight(format!("{name}.weight"), shape));
    v.push((format!("{name}.bias"), vec![out], Init::Bias));
}

fn res(v: &mut Vec<Spec>, p: &str, cin: usize, cout: usize) {
    v.push((
        format!("{p}.residual.0.gamma"),
        vec![cin, 1, 1, 1],
        Init::Norm,
    ));
    conv(v, &format!("{p}.residual.2"), cout, cin, &[3, 3, 3]);
    v.push((
        format!("{p}.residual.3.gamma"),
        vec![cout, 1, 1, 1],
        Init::Norm,
    ));
    conv(v, &format!("{p}.residual.6"), cout, cout, &[3, 3, 3]);
    if cin != cout {
        conv(v, &format!("{p}.shortcut"), cout, cin, &[1, 1, 1]);
    }
}

fn middle(v: &mut Vec<Spec>, p: &str, c: usize) {
    res(v, &format!("{p}.middle.0"), c, c);
    v.push((
        format!("{p}.middle.1.norm.gamma"),
        vec![c, 1, 1],
        Init::Norm,
    ));
    conv(v, &format!("{p}.middle.1.to_qkv"), 3 * c, c, &[1, 1]);
    conv(v, &format!("{p}.middle.1.proj"), c, c, &[1, 1]);
    res(v, &format!("{p}.middle.2"), c, c);
}

/// Every tensor of a Wan 2.2 VAE of `cfg`, original (ComfyUI) names.
pub(crate) fn vae22_specs(cfg: &Wan22VaeConfig) -> Vec<Spec> {
    let mut v = Vec::new();
    let (z, nrb, n) = (cfg.z_dim, cfg.num_res_blocks, cfg.dim_mult.len());
    let e = cfg.encoder_dims();
    conv(&mut v, "encoder.conv1", e[0], 12, &[3, 3, 3]);
    for i in 0..n {
        let p = format!("encoder.downsamples.{i}.downsamples");
        for j in 0..nrb {
            res(
                &mut v,
                &format!("{p}.{j}"),
                if j == 0 { e[i] } else { e[i + 1] },
                e[i + 1],
            );
        }
        if i + 1 < n {
            let c = e[i + 1];
            conv(&mut v, &format!("{p}.{nrb}.resample.1"), c, c, &[3, 3]);
            if cfg.temporal_downsample[i] {
                conv(&mut v, &format!("{p}.{nrb}.time_conv"), c, c, &[3, 1, 1]);
            }
        }
    }
    middle(&mut v, "encoder", e[n]);
    v.push((
        "encoder.head.0.gamma".into(),
        vec![e[n], 1, 1, 1],
        Init::Norm,
    ));
    conv(&mut v, "encoder.head.2", 2 * z, e[n], &[3, 3, 3]);
    conv(&mut v, "conv1", 2 * z, 2 * z, &[1, 1, 1]);
    conv(&mut v, "conv2", z, z, &[1, 1, 1]);
    let d = cfg.decoder_dims();
    conv(&mut v, "decoder.conv1", d[0], z, &[3, 3, 3]);
    middle(&mut v, "decoder", d[0]);
    let up_t: Vec<bool> = cfg.temporal_downsample.iter().rev().copied().collect();
    for i in 0..n {
        let p = format!("decoder.upsamples.{i}.upsamples");
        for j in 0..=nrb {
            res(
                &mut v,
                &format!("{p}.{j}"),
                if j == 0 { d[i] } else { d[i + 1] },
                d[i + 1],
            );
        }
        if i + 1 < n {
            let c = d[i + 1];
            conv(
                &mut v,
                &format!("{p}.{}.resample.1", nrb + 1),
                c,
                c,
                &[3, 3],
            );
            if up_t[i] {
                conv(
                    &mut v,
                    &format!("{p}.{}.time_conv", nrb + 1),
                    2 * c,
                    c,
                    &[3, 1, 1],
                );
            }
        }
    }
    v.push((
        "decoder.head.0.gamma".into(),
        vec![d[n], 1, 1, 1],
        Init::Norm,
    ));
    conv(&mut v, "decoder.head.2", 12, d[n], &[3, 3, 3]);
    v
}

pub fn write_vae22(path: &Path, cfg: &Wan22VaeConfig, seed: u64) -> Result<(), String> {
    write_seeded(path, &vae22_specs(cfg), &[], &[], seed, "wan22-vae-tiny")
}

/// A rank-4 LoRA (kohya keys, alpha = rank) on every block's self- and
/// cross-attention q, k, v, o, its delta about a tenth of the weight.
pub fn write_lora(path: &Path, cfg: &WanConfig, seed: u64, label: &str) -> Result<(), String> {
    const RANK: usize = 4;
    let d = cfg.dim;
    let mut v = Vec::new();
    for i in 0..cfg.num_layers {
        for attn in ["self_attn", "cross_attn"] {
            for p in ["q", "k", "v", "o"] {
                let m = format!("diffusion_model.blocks.{i}.{attn}.{p}");
                v.push((
                    format!("{m}.lora_down.weight"),
                    vec![RANK, d],
                    Init::Weight { fan_in: d },
                ));
                v.push((
                    format!("{m}.lora_up.weight"),
                    vec![d, RANK],
                    Init::Weight { fan_in: 100 * RANK },
                ));
            }
        }
    }
    write_seeded(path, &v, &[], &[], seed, label)
}
