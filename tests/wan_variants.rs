//! The DiT runs every Wan variant's shapes: I2V (36 input channels: noise
//! 16, mask 4, image latent 16, through a wider patch embedding) and
//! TI2V-5B (48 channels in and out, per-token timesteps). The models are
//! tiny and random; what is checked is how the timesteps reach each token.
mod common;

use baton::models::wan::dit::WanDit;
use baton::models::wan::WanConfig;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::wan_keys::random_wan;

fn tiny(in_dim: usize, out_dim: usize, num_layers: usize) -> WanConfig {
    WanConfig {
        in_dim,
        out_dim,
        num_layers,
        ..WanConfig::fixture_tiny()
    }
}

fn model(cfg: &WanConfig) -> WanDit {
    let vb = VarBuilder::from_tensors(random_wan(cfg, 7), DType::F32, &Device::Cpu);
    WanDit::new(cfg, vb).unwrap()
}

fn inputs(cfg: &WanConfig, frames: usize) -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let n = cfg.in_dim * frames * 4 * 4;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let x = Tensor::from_vec(x, (1, cfg.in_dim, frames, 4, 4), &dev).unwrap();
    let l = 5 * cfg.text_dim;
    let c: Vec<f32> = (0..l)
        .map(|i| ((i * 13 % 29) as f32 / 14.0) - 1.0)
        .collect();
    let ctx = Tensor::from_vec(c, (1, 5, cfg.text_dim), &dev).unwrap();
    (x, ctx)
}

#[test]
fn i2v_model_takes_36_channels_and_returns_16() {
    let cfg = tiny(36, 16, 2);
    let (x, ctx) = inputs(&cfg, 3);
    let y = model(&cfg)
        .forward(&x, &Tensor::new(&[900f32], &Device::Cpu).unwrap(), &ctx)
        .unwrap();
    assert_eq!(y.dims(), &[1, 16, 3, 4, 4]);
    let s = y
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(s.is_finite() && s > 0.0, "{s}");
    // A 16-channel latent is refused with the shapes in the message.
    let (x16, _) = inputs(&tiny(16, 16, 2), 3);
    let err = model(&cfg)
        .forward(&x16, &Tensor::new(&[900f32], &Device::Cpu).unwrap(), &ctx)
        .unwrap_err()
        .to_string();
    assert!(err.contains("in_dim 36"), "{err}");
}

/// [1, S] timesteps: `first` for the first latent frame's tokens, `rest` after.
fn per_token(frames: usize, first: f32, rest: f32) -> Tensor {
    let per_frame = 2 * 2; // 4x4 latent, patch 2x2
    let v: Vec<f32> = (0..frames * per_frame)
        .map(|i| if i < per_frame { first } else { rest })
        .collect();
    Tensor::from_vec(v, (1, frames * per_frame), &Device::Cpu).unwrap()
}

#[test]
fn ti2v_per_token_timesteps_equal_to_one_timestep_give_the_same_output() {
    let cfg = tiny(48, 48, 2);
    let m = model(&cfg);
    let (x, ctx) = inputs(&cfg, 3);
    let one = m
        .forward(&x, &Tensor::new(&[700f32], &Device::Cpu).unwrap(), &ctx)
        .unwrap();
    assert_eq!(one.dims(), &[1, 48, 3, 4, 4]);
    let each = m.forward(&x, &per_token(3, 700.0, 700.0), &ctx).unwrap();
    common::assert_close(&each, &one, 1e-6, "per-token t = 700 everywhere");
    // First frame clean (t = 0, the conditioning image): a different output.
    let cond = m.forward(&x, &per_token(3, 0.0, 700.0), &ctx).unwrap();
    assert!(common::rel_l2(&cond, &one) > 1e-3);
}

/// With no blocks nothing mixes tokens, so each token's output depends only
/// on its own timestep: the first frame must equal a t = 0 run there, the
/// other frames a t = 700 run.
#[test]
fn ti2v_each_token_is_modulated_by_its_own_timestep() {
    let cfg = tiny(48, 48, 0);
    let m = model(&cfg);
    let (x, ctx) = inputs(&cfg, 3);
    let at = |t: f32| {
        m.forward(&x, &Tensor::new(&[t], &Device::Cpu).unwrap(), &ctx)
            .unwrap()
    };
    let (t0, t700) = (at(0.0), at(700.0));
    let mixed = m.forward(&x, &per_token(3, 0.0, 700.0), &ctx).unwrap();
    let frames = |t: &Tensor, a: usize, n: usize| t.narrow(2, a, n).unwrap();
    common::assert_close(
        &frames(&mixed, 0, 1),
        &frames(&t0, 0, 1),
        1e-6,
        "first frame",
    );
    common::assert_close(
        &frames(&mixed, 1, 2),
        &frames(&t700, 1, 2),
        1e-6,
        "later frames",
    );
    assert!(common::rel_l2(&frames(&t0, 0, 1), &frames(&t700, 0, 1)) > 1e-3);
    // A timestep row that does not match the token count is refused.
    let err = m
        .forward(&x, &per_token(2, 0.0, 700.0), &ctx)
        .unwrap_err()
        .to_string();
    assert!(err.contains("per-token timesteps"), "{err}");
}
