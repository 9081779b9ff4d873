//! A DiT at work: one raw forward (`predict`) and a KSamplerAdvanced pass
//! (`sample`). The pass itself is `sampling::ksampler`; this file makes
//! sure the model is on the device, checks inputs against its config,
//! adapts the model to the pass's `Denoiser`, and records what ran.

use super::activations;
use super::cancel;
use super::dry;
use super::error::{tensor_err, Result, RuntimeError};
use super::journal::SampleRecord;
use super::options::{SampleOptions, SampleReport};
use super::registry::{LoadedModel, ModelId};
use super::residency::WanResident;
use super::runtime::Runtime;
use super::size::mib;
use crate::models::wan::WanConfig;
use crate::sampling::ksampler::{all_finite, Call, Cond, Denoiser, KSampler, PassError, PassIo};
use crate::sampling::samplers::{SolverState, StepCallback};
use candle_core::{DType, Device, Tensor};

impl From<PassError> for RuntimeError {
    fn from(e: PassError) -> Self {
        match e {
            PassError::Input(s) => RuntimeError::Input(s),
            PassError::Tensor { context, source } => RuntimeError::Tensor { context, source },
        }
    }
}

/// A resident (or streamed) DiT as the sampling pass's denoiser, with its
/// contexts on the device.
struct DitDenoiser<'a> {
    model: &'a WanResident,
    positive: Tensor,
    negative: Option<Tensor>,
    /// Concatenated after `x` on the channel axis (I2V's `c_concat`), at x's batch.
    image_cond: Option<Tensor>,
    /// Per latent frame, the factor on the timestep (TI2V's noise mask:
    /// 0 on a kept frame), with the tokens per frame.
    frame_scales: Option<(Vec<f32>, usize)>,
}

impl DitDenoiser<'_> {
    /// The timestep tensor: [1], or per token [1, S] under a noise mask.
    fn timesteps(&self, t: f32, dev: &Device) -> candle_core::Result<Tensor> {
        match &self.frame_scales {
            None => Tensor::new(&[t], dev),
            Some((scales, per_frame)) => {
                let v: Vec<f32> = scales
                    .iter()
                    .flat_map(|s| std::iter::repeat_n(s * t, *per_frame))
                    .collect();
                let n = v.len();
                Tensor::from_vec(v, (1, n), dev)
            }
        }
    }
}

impl Denoiser for DitDenoiser<'_> {
    fn velocity(&mut self, x: &Tensor, call: &Call) -> candle_core::Result<Tensor> {
        let ctx = match call.cond {
            Cond::Positive => {
                // Once per guided evaluation: a stop request lands between forwards.
                cancel::check_candle(|| {
                    format!("before step {} of {}", call.step + 1, call.steps)
                })?;
                &self.positive
            }
            Cond::Negative => self
                .negative
                .as_ref()
                .ok_or_else(|| candle_core::Error::Msg("no negative context".into()))?,
        };
        let t = self.timesteps(call.timestep, x.device())?;
        let v = match &self.image_cond {
            Some(c) => self.model.forward(&Tensor::cat(&[x, c], 1)?, &t, ctx)?,
            None => self.model.forward(x, &t, ctx)?,
        };
        if !all_finite(&v)? {
            candle_core::bail!(
                "the model returned NaN or Inf at step {} of {} (sigma {}); \
                 check its weights (load_model(..., #{{ check_weights: true }}))",
                call.step + 1,
                call.steps,
                call.sigma
            );
        }
        Ok(v)
    }
}

impl Runtime {
    /// One raw forward: the model's velocity prediction (f32).
    pub fn predict(
        &mut self,
        id: ModelId,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor> {
        self.predict_at(id, x, t, context, None, "")
    }

    /// `predict`, recorded on the timeline at script position `at`. With
    /// `image_cond` (an I2V expert), `x` is the latent alone and the
    /// conditioning is concatenated after it; without, `x` is the full input.
    pub fn predict_at(
        &mut self,
        id: ModelId,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        image_cond: Option<&Tensor>,
        at: &str,
    ) -> Result<Tensor> {
        self.ensure_on_device(id, at)?;
        let m = self.model(id)?;
        let cfg = dit_config(m)?;
        let full;
        let x = match image_cond {
            Some(c) => {
                check_image_cond(&m.name, cfg, x, Some(c))?;
                let b = x.dim(0).map_err(tensor_err("predict"))?;
                full = c
                    .to_dtype(x.dtype())
                    .and_then(|c| c.repeat((b / c.dim(0)?.max(1), 1, 1, 1, 1)))
                    .and_then(|c| Tensor::cat(&[x, &c], 1))
                    .map_err(tensor_err("image_cond"))?;
                &full
            }
            None => x,
        };
        check_inputs(&m.name, cfg, x, context, cfg.in_dim)?;
        let act = activations::dit_forward(
            cfg,
            activations::dit_tokens(cfg, x.dims()),
            context.dim(1).unwrap_or(0) as u64,
            m.info.dtype,
        );
        let name = m.name.clone();
        let out = if self.dry {
            dry::stand_in(x.dims()).map_err(tensor_err("predict"))?
        } else {
            let dit = m.dit().map_err(RuntimeError::Input)?;
            let dev = &self.device;
            // The stem takes a scalar, [1] or [B] timestep in any float dtype.
            let out = (|| {
                dit.forward(
                    &x.to_device(dev)?,
                    &t.to_device(dev)?,
                    &context.to_device(dev)?,
                )?
                .to_device(&Device::Cpu)
            })()
            .map_err(tensor_err(format!("forward of '{name}'")))?;
            dit.take_streamed();
            out
        };
        self.record(at, "predict", &name, act, String::new());
        Ok(out)
    }

    /// Runs a KSamplerAdvanced pass and returns the new latent (on the host).
    pub fn sample(
        &mut self,
        id: ModelId,
        latent: &Tensor,
        o: &SampleOptions,
        on_step: &mut dyn FnMut(usize, usize, f32),
        at: &str,
    ) -> Result<Tensor> {
        self.ensure_on_device(id, at)?;
        let k = &o.pass;
        k.full_sigmas()?;
        let m = self.model(id)?;
        let cfg = dit_config(m)?;
        let channels = check_image_cond(&m.name, cfg, latent, o.image_cond.as_ref())?;
        check_inputs(&m.name, cfg, latent, &o.positive, channels)?;
        if let Some(neg) = &o.negative {
            check_inputs(&m.name, cfg, latent, neg, channels)?;
        }
        o.check_guidance()?;
        let Some(cut) = k.cut_sigmas()? else {
            tracing::info!(
                "sample {}: steps {}..{} is empty, latent returned unchanged",
                m.name,
                k.start,
                k.end.map_or("end".into(), |e| e.to_string())
            );
            let name = m.name.clone();
            self.journal_sample(&name, k, 0.0);
            return Ok(latent.clone());
        };
        let act = activations::dit_sample(
            cfg,
            latent.dims(),
            o.positive.dim(1).unwrap_or(0) as u64,
            m.info.dtype,
        );
        let name = m.name.clone();
        if self.dry {
            let note = format!(
                "{} steps, {} model calls (planned)",
                cut.len() - 1,
                k.planned_calls(&cut)
            );
            let out = latent.to_dtype(DType::F32).map_err(tensor_err("latent"))?;
            self.record(at, "sample", &name, act, note);
            self.journal_sample(&name, k, 0.0);
            return Ok(out);
        }
        let started = std::time::Instant::now();
        let (out, report) = run_pass(m, o, latent, &self.device, on_step)?;
        let report = SampleReport {
            seconds: started.elapsed().as_secs_f64(),
            ..report
        };
        tracing::info!(
            "sampled {} steps with {name} ({}, {} model calls, {:.2}s, {} streamed)",
            report.steps_run,
            k.sampler.name(),
            report.model_calls,
            report.seconds,
            mib(report.streamed_bytes)
        );
        let note = format!(
            "{} steps, {} model calls, {:.2}s, {} streamed",
            report.steps_run,
            report.model_calls,
            report.seconds,
            mib(report.streamed_bytes)
        );
        self.journal_sample(&name, k, report.seconds);
        self.last_sample = report;
        self.record(at, "sample", &name, act, note);
        Ok(out)
    }
}

impl Runtime {
    /// Notes a finished pass for the run manifest.
    pub(super) fn journal_sample(&mut self, model: &str, k: &KSampler, seconds: f64) {
        self.journal.samples.push(SampleRecord {
            model: model.to_string(),
            seed: (k.add_noise && k.noise.is_none()).then_some(k.seed),
            steps: k
                .sigmas
                .as_ref()
                .map_or(k.steps, |s| s.len().saturating_sub(1)),
            explicit_sigmas: k.sigmas.is_some(),
            start: k.start,
            end: k.end,
            sampler: k.sampler.name().to_string(),
            scheduler: k.scheduler.name().to_string(),
            cfg: k.cfg,
            shift: k.shift,
            seconds,
        });
    }
}

/// The pass on the model's device, with its streaming logged per step.
fn run_pass(
    m: &LoadedModel,
    o: &SampleOptions,
    latent: &Tensor,
    dev: &Device,
    on_step: &mut dyn FnMut(usize, usize, f32),
) -> Result<(Tensor, SampleReport)> {
    let model = m.dit().map_err(RuntimeError::Input)?;
    let mut local = SolverState::default();
    let mut shared = o.state.as_ref().map(|s| s.borrow_mut());
    let state: &mut SolverState = match shared.as_deref_mut() {
        Some(s) => s,
        None => &mut local,
    };
    // Scripts hold host tensors; the pass runs where the model is.
    let on_device = |t: &Tensor, what: &str| t.to_device(dev).map_err(tensor_err(what));
    let mut denoiser = DitDenoiser {
        model,
        positive: on_device(&o.positive, "positive context")?,
        negative: o
            .negative
            .as_ref()
            .map(|n| on_device(n, "negative context"))
            .transpose()?,
        image_cond: None,
        frame_scales: None,
    };
    let latent = on_device(
        &latent.to_dtype(DType::F32).map_err(tensor_err("latent"))?,
        "latent",
    )?;
    if let Some(c) = &o.image_cond {
        let b = latent.dim(0).map_err(tensor_err("latent"))?;
        let c = c
            .to_dtype(DType::F32)
            .and_then(|c| c.repeat((b / c.dim(0)?.max(1), 1, 1, 1, 1)))
            .map_err(tensor_err("image_cond"))?;
        denoiser.image_cond = Some(on_device(&c, "image_cond")?);
    }
    if let Some(mask) = &o.pass.noise_mask {
        let cfg = &model.cfg;
        let [_, _, _, h, w] = latent.dims() else {
            return Err(RuntimeError::Input(format!(
                "latent {:?} is not 5-D",
                latent.dims()
            )));
        };
        let per_frame = (h / cfg.patch_size[1]) * (w / cfg.patch_size[2]);
        let scales = crate::conditioning::frame_scales(mask).map_err(tensor_err("noise_mask"))?;
        denoiser.frame_scales = Some((scales, per_frame));
    }
    // Streamed bytes per step, with the rate the forwards sustained.
    let mut streamed_total = 0u64;
    let mut step_started = std::time::Instant::now();
    let mut each_step = |i: usize, n: usize, sigma: f32| {
        let bytes = model.take_streamed();
        if bytes > 0 {
            let secs = step_started.elapsed().as_secs_f64();
            tracing::info!(
                "step {}/{n}: streamed {:.2} GB in {secs:.2}s ({:.1} GB/s effective)",
                i + 1,
                bytes as f64 / 1e9,
                bytes as f64 / secs.max(1e-9) / 1e9
            );
            streamed_total += bytes;
        }
        step_started = std::time::Instant::now();
        on_step(i, n, sigma)
    };
    let io = PassIo {
        on_step: &mut each_step as &mut StepCallback,
        noise: None,
        observe: None,
    };
    let what = format!("sampling with '{}'", m.name);
    let outcome = o.pass.run(&mut denoiser, &latent, state, io, &what)?;
    let out = outcome
        .out
        .expect("a non-empty cut runs")
        .to_device(&Device::Cpu)
        .map_err(tensor_err("the final latent"))?;
    let report = SampleReport {
        steps_run: outcome.steps,
        model_calls: outcome.model_calls,
        streamed_bytes: streamed_total + model.take_streamed(),
        seconds: 0.0,
    };
    Ok((out, report))
}

/// A DiT's config, from its weights or from its plan.
fn dit_config(m: &LoadedModel) -> Result<&WanConfig> {
    match m.planned() {
        Some(dry::Planned::Dit(cfg)) => Ok(cfg),
        Some(_) => Err(RuntimeError::Input(m.not_a("a Wan diffusion model (DiT)"))),
        None => Ok(&m.dit().map_err(RuntimeError::Input)?.cfg),
    }
}

/// The latent channels `sample` expects: the model's input width less the
/// image conditioning's. An image-to-video DiT (input wider than output)
/// needs `image_cond`; any other refuses it.
fn check_image_cond(
    name: &str,
    cfg: &WanConfig,
    x: &Tensor,
    cond: Option<&Tensor>,
) -> Result<usize> {
    let extra = cfg.in_dim.saturating_sub(cfg.out_dim);
    match cond {
        None if extra > 0 => Err(RuntimeError::Input(format!(
            "'{name}' is an image-to-video model ({} input channels: {} latent + {extra} \
             conditioning): pass image_cond: (the .image_cond of image_to_video or first_last_to_video)",
            cfg.in_dim, cfg.out_dim
        ))),
        None => Ok(cfg.in_dim),
        Some(_) if extra == 0 => Err(RuntimeError::Input(format!(
            "'{name}' takes no image_cond (its {} input channels are the latent's); \
             image_cond is for an image-to-video expert (36 channels)",
            cfg.in_dim
        ))),
        Some(c) => {
            let (cd, xd) = (c.dims(), x.dims());
            let fits = cd.len() == 5
                && xd.len() == 5
                && cd[1] == extra
                && cd[2..] == xd[2..]
                && (cd[0] == 1 || cd[0] == xd[0]);
            if !fits {
                return Err(RuntimeError::Input(format!(
                    "image_cond {cd:?} does not fit '{name}' and the latent {xd:?}: it needs \
                     [1 or B, {extra}, F, H, W] with the latent's F, H, W"
                )));
            }
            Ok(cfg.out_dim)
        }
    }
}

/// `channels`: the latent's width (the model's input less `image_cond`).
fn check_inputs(
    name: &str,
    cfg: &WanConfig,
    x: &Tensor,
    context: &Tensor,
    channels: usize,
) -> Result<()> {
    let d = x.dims();
    if d.len() != 5 || d[1] != channels {
        return Err(RuntimeError::Input(format!(
            "'{}' expects a latent [B, {}, F, H, W], got {:?}",
            name, channels, d
        )));
    }
    if d.contains(&0) {
        return Err(RuntimeError::Input(format!(
            "latent {d:?} has an empty dimension"
        )));
    }
    let p = cfg.patch_size;
    if !(d[2].is_multiple_of(p[0]) && d[3].is_multiple_of(p[1]) && d[4].is_multiple_of(p[2])) {
        return Err(RuntimeError::Input(format!(
            "latent {:?}: F, H, W must be multiples of the patch size {:?}",
            d, p
        )));
    }
    let c = context.dims();
    if c.len() != 3 || c[2] != cfg.text_dim || c[0] != d[0] {
        return Err(RuntimeError::Input(format!(
            "'{}' expects a context [B, L, {}] with B = {}, got {:?}",
            name, cfg.text_dim, d[0], c
        )));
    }
    if c[1] == 0 {
        return Err(RuntimeError::Input(format!("context {c:?} has no tokens")));
    }
    Ok(())
}
