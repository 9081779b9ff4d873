//! Sampling primitives: empty_latent, sample, schedule.

use super::models::ModelHandle;
use super::Shared;
use crate::host::errors::{script_err, tensor_err, ScriptResult};
use crate::host::options::Opts;
use crate::runtime::SampleOptions;
use crate::sampling::sigmas;
use candle_core::{DType, Device, Tensor};
use rhai::{Array, Dynamic, Engine, Map};

/// Defaults shared by `sample` and `schedule`, so an inspected schedule is the
/// one `sample` would use (ComfyUI's Wan 2.2 template: 20 steps, simple, shift 8).
const DEFAULT_STEPS: usize = 20;
const DEFAULT_SCHEDULER: &str = "simple";
const DEFAULT_SHIFT: f64 = 8.0;

pub const SAMPLE_OPTIONS: &[&str] = &[
    "positive",
    "negative",
    "steps",
    "start",
    "end",
    "cfg",
    "sampler",
    "scheduler",
    "shift",
    "seed",
    "add_noise",
    "leftover_noise",
    "sigmas",
    "noise",
];

/// Defaults follow ComfyUI's Wan 2.2 template (shift 8, cfg 3.5, euler/simple).
fn sample_options(map: Map) -> ScriptResult<SampleOptions> {
    let o = Opts::new("sample", map, SAMPLE_OPTIONS)?;
    let positive = o.opt_tensor("positive")?.ok_or_else(|| {
        script_err("sample: option 'positive' (the text context tensor) is required")
    })?;
    let seed = o.opt_int("seed")?.unwrap_or(0);
    Ok(SampleOptions {
        positive,
        negative: o.opt_tensor("negative")?,
        steps: o.usize("steps", DEFAULT_STEPS)?,
        start: o.usize("start", 0)?,
        end: o.opt_usize("end")?,
        cfg: o.f64("cfg", 3.5)?,
        sampler: o.string("sampler", "euler")?,
        scheduler: o.string("scheduler", DEFAULT_SCHEDULER)?,
        shift: o.f64("shift", DEFAULT_SHIFT)? as f32,
        // Negative seeds wrap modulo 2^64, as torch.manual_seed does.
        seed: seed as u64,
        add_noise: o.bool("add_noise", true)?,
        leftover_noise: o.bool("leftover_noise", false)?,
        sigmas: o.opt_f32_list("sigmas")?,
        noise: o.opt_tensor("noise")?,
    })
}

pub fn register(engine: &mut Engine, rt: &Shared) {
    engine.register_fn("empty_latent", |map: Map| -> ScriptResult<Tensor> {
        let o = Opts::new(
            "empty_latent",
            map,
            &["width", "height", "frames", "batch", "channels"],
        )?;
        let (w, h) = (o.usize("width", 832)?, o.usize("height", 480)?);
        let frames = o.usize("frames", 81)?;
        let (batch, channels) = (o.usize("batch", 1)?, o.usize("channels", 16)?);
        if w % 16 != 0 || h % 16 != 0 || w == 0 || h == 0 {
            return Err(script_err(format!(
                "empty_latent: width and height must be positive multiples of 16, got {w}x{h}"
            )));
        }
        if frames == 0 || (frames - 1) % 4 != 0 {
            return Err(script_err(format!(
                "empty_latent: frames must be 4k+1 (1, 5, ..., 81), got {frames}"
            )));
        }
        // Wan's VAE: 8x spatial and 4x temporal compression, first frame kept.
        let shape = [batch, channels, (frames - 1) / 4 + 1, h / 8, w / 8];
        Tensor::zeros(&shape, DType::F32, &Device::Cpu).map_err(tensor_err)
    });

    let r = rt.clone();
    engine.register_fn(
        "sample",
        move |m: ModelHandle, latent: Tensor, map: Map| -> ScriptResult<Tensor> {
            let opts = sample_options(map)?;
            let mut rt = r.borrow_mut();
            let mut on_step = |i: usize, n: usize, s: f32| {
                tracing::debug!("step {}/{} sigma {s:.4}", i + 1, n);
            };
            rt.sample(m.id, &latent, &opts, &mut on_step)
                .map_err(script_err)
        },
    );

    engine.register_fn("schedule", |map: Map| -> ScriptResult<Array> {
        let o = Opts::new("schedule", map, &["scheduler", "steps", "shift"])?;
        let s = sigmas::schedule(
            &o.string("scheduler", DEFAULT_SCHEDULER)?,
            o.usize("steps", DEFAULT_STEPS)?,
            o.f64("shift", DEFAULT_SHIFT)? as f32,
        )
        .map_err(script_err)?;
        Ok(s.into_iter().map(|v| Dynamic::from(v as f64)).collect())
    });
}
