//! Sampling primitives: empty_latent, sample, schedule.

use super::ModelHandle;
use super::Shared;
use crate::host::errors::{call_site, script_err, tensor_err, ScriptResult};
use crate::host::options::Opts;
use crate::runtime::SampleOptions;
use crate::sampling::ksampler::{KSampler, Sampler, Scheduler};
use crate::sampling::samplers::{SharedState, SolverState};
use crate::sampling::sigmas;
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rhai::{Array, Dynamic, Engine, Map, NativeCallContext};

/// Defaults shared by `sample` and `schedule`, so an inspected schedule is the
/// one `sample` would use (ComfyUI's Wan 2.2 template: 20 steps, simple, shift 8).
const DEFAULT_STEPS: usize = 20;
const DEFAULT_SCHEDULER: &str = "simple";
const DEFAULT_SHIFT: f64 = 8.0;
const DEFAULT_SAMPLER: &str = "euler";

/// A script's handle on a solver history (`sampler_state()`), shared by the
/// passes it is handed to: the first fills it, the next continues it.
#[derive(Clone)]
pub struct StateHandle(pub SharedState);

/// Defaults follow ComfyUI's Wan 2.2 template (shift 8, cfg 3.5, euler/simple).
fn sample_options(map: Map) -> ScriptResult<SampleOptions> {
    let o = Opts::documented("sample", map)?;
    let positive = o.opt_tensor("positive")?.ok_or_else(|| {
        script_err("sample: option 'positive' (the text context tensor) is required")
    })?;
    let seed = o.opt_int("seed")?.unwrap_or(0);
    let pass = KSampler {
        sampler: Sampler::parse(&o.string("sampler", DEFAULT_SAMPLER)?).map_err(script_err)?,
        scheduler: Scheduler::parse(&o.string("scheduler", DEFAULT_SCHEDULER)?)
            .map_err(script_err)?,
        steps: o.usize("steps", DEFAULT_STEPS)?,
        shift: o.f64("shift", DEFAULT_SHIFT)? as f32,
        sigmas: o.opt_f32_list("sigmas")?,
        start: o.usize("start", 0)?,
        end: o.opt_usize("end")?,
        cfg: o.f64("cfg", 3.5)?,
        // Negative seeds wrap modulo 2^64, as torch.manual_seed does.
        seed: seed as u64,
        add_noise: o.bool("add_noise", true)?,
        leftover_noise: o.bool("leftover_noise", false)?,
        noise: o.opt_tensor("noise")?,
        noise_mask: o.opt_tensor("noise_mask")?,
    };
    Ok(SampleOptions {
        positive,
        negative: o.opt_tensor("negative")?,
        image_cond: o.opt_tensor("image_cond")?,
        pass,
        state: o
            .opt_custom::<StateHandle>("state", "a SamplerState from sampler_state()")?
            .map(|h| h.0),
    })
}

/// One progress bar per `sample` call: step, sigma and it/s. indicatif draws
/// nothing when stderr is not a terminal, so logs and CI stay clean.
struct Progress {
    bar: Option<ProgressBar>,
    prefix: String,
}

impl Progress {
    fn new(model: &str, sampler: &str) -> Self {
        Self {
            bar: None,
            prefix: format!("{model} {sampler}"),
        }
    }

    fn step(&mut self, i: usize, n: usize, sigma: f32) {
        tracing::debug!("step {}/{} sigma {sigma:.4}", i + 1, n);
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(n as u64);
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(self.prefix.clone());
            bar
        });
        bar.set_message(format!("σ {sigma:.4}"));
        bar.set_position((i + 1) as u64);
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

pub fn register(engine: &mut Engine, rt: &Shared) {
    engine.register_type_with_name::<StateHandle>("SamplerState");
    engine.register_fn("sampler_state", || {
        StateHandle(std::rc::Rc::new(std::cell::RefCell::new(SolverState {
            spans_passes: true,
            ..Default::default()
        })))
    });
    engine.register_fn("to_string", |h: &mut StateHandle| describe_state(h));
    engine.register_fn("to_debug", |h: &mut StateHandle| describe_state(h));

    engine.register_fn("empty_latent", |map: Map| -> ScriptResult<Tensor> {
        let o = Opts::documented("empty_latent", map)?;
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
        // Wan's VAE: 8x spatial (the 2.2 VAE's 48 channels: 16x) and 4x
        // temporal compression, first frame kept.
        let s = if channels == 48 { 16 } else { 8 };
        if w % (2 * s) != 0 || h % (2 * s) != 0 {
            return Err(script_err(format!(
                "empty_latent: a {channels}-channel latent needs width and height multiples of {}, got {w}x{h}",
                2 * s
            )));
        }
        let shape = crate::host::options::check_elements(vec![
            batch,
            channels,
            (frames - 1) / 4 + 1,
            h / s,
            w / s,
        ])?;
        Tensor::zeros(shape, DType::F32, &Device::Cpu).map_err(tensor_err)
    });

    let r = rt.clone();
    engine.register_fn(
        "sample",
        move |ctx: NativeCallContext,
              m: ModelHandle,
              latent: Tensor,
              map: Map|
              -> ScriptResult<Tensor> {
            let opts = sample_options(map)?;
            let at = call_site(&ctx);
            let mut bar = Progress::new(&m.name, opts.pass.sampler.name());
            let mut on_step = |i: usize, n: usize, s: f32| bar.step(i, n, s);
            if let Some(f) = super::scripted::function_of(&r, m.id) {
                let out = super::scripted::sample(&ctx, &r, &m, &f, &latent, &opts, &mut on_step);
                bar.finish();
                return out;
            }
            let out = r
                .borrow_mut()
                .sample(m.id, &latent, &opts, &mut on_step, &at);
            bar.finish();
            out.map_err(script_err)
        },
    );

    engine.register_fn("schedule", |map: Map| -> ScriptResult<Array> {
        let o = Opts::documented("schedule", map)?;
        let s = sigmas::for_sampler(
            &o.string("scheduler", DEFAULT_SCHEDULER)?,
            o.usize("steps", DEFAULT_STEPS)?,
            o.f64("shift", DEFAULT_SHIFT)? as f32,
            &o.string("sampler", DEFAULT_SAMPLER)?,
        )
        .map_err(script_err)?;
        Ok(s.into_iter().map(|v| Dynamic::from(v as f64)).collect())
    });

    engine.register_fn(
        "boundary_step",
        |list: Array, ratio: Dynamic| -> ScriptResult<i64> {
            let ratio = crate::host::options::as_f64(&ratio).ok_or_else(|| {
                script_err("boundary_step: the ratio must be a number such as 0.875")
            })?;
            let s = crate::host::options::as_f32_list(&list)
                .ok_or_else(|| script_err("boundary_step: sigmas must be a list of numbers"))?;
            Ok(sigmas::boundary_step(&s, ratio) as i64)
        },
    );
}

fn describe_state(h: &StateHandle) -> String {
    let s = h.0.borrow();
    if s.is_fresh() {
        return "SamplerState(fresh)".into();
    }
    format!(
        "SamplerState({}, {} steps done, stopped at sigma {})",
        s.sampler,
        s.steps_done,
        s.sigma.unwrap_or(f32::NAN)
    )
}
