//! One KSamplerAdvanced pass: the schedule, the start/end cut, the initial
//! noise, classifier-free guidance, the continuation of a solver state and
//! the per-step loop, behind a [`Denoiser`].
//!
//! The runtime's DiT and the tests' analytic field are both denoisers, so
//! the pass the tests hold against ComfyUI's traces is the pass `sample`
//! runs. Sampler and scheduler names are resolved once, into [`Sampler`]
//! and [`Scheduler`], before anything is computed.

use super::samplers::{self, Hooks, SamplerFn, SolverState, StepCallback};
use super::{brownian, guidance, noise, sigmas};
use candle_core::{DType, Tensor};

/// A sampler name resolved against [`super::SAMPLER_TABLE`].
#[derive(Clone, Copy)]
pub struct Sampler {
    name: &'static str,
    run: SamplerFn,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Sampler {
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        super::SAMPLER_TABLE
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(name, run)| Sampler { name, run })
            .ok_or_else(|| {
                format!(
                    "unknown sampler '{name}' (available: {})",
                    super::sampler_names().join(", ")
                )
            })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// ComfyUI's `*_cfg_pp` samplers: they read the uncond prediction, so
    /// the pass runs the uncond pass even at cfg 1.
    pub fn cfg_pp(&self) -> bool {
        super::is_cfg_pp(self.name)
    }

    /// diffusers' UniPC feeds the model integer timesteps (see [`timesteps`]).
    fn integer_timesteps(&self) -> bool {
        self.name == "unipc_flow"
    }
}

/// A scheduler name resolved against [`sigmas::SCHEDULERS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduler(&'static str);

impl Scheduler {
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        sigmas::SCHEDULERS
            .iter()
            .find(|s| **s == name)
            .map(|s| Scheduler(s))
            .ok_or_else(|| {
                format!(
                    "unknown scheduler '{name}' (available: {})",
                    sigmas::SCHEDULERS.join(", ")
                )
            })
    }

    pub fn name(&self) -> &'static str {
        self.0
    }
}

/// KSamplerAdvanced's settings, names resolved.
#[derive(Debug, Clone)]
pub struct KSampler {
    pub sampler: Sampler,
    pub scheduler: Scheduler,
    pub steps: usize,
    /// The model's flow shift: the schedule's, and the SDE samplers' sigma map.
    pub shift: f32,
    /// Overrides steps/scheduler/shift with an explicit list (steps + 1 values).
    pub sigmas: Option<Vec<f32>>,
    pub start: usize,
    pub end: Option<usize>,
    pub cfg: f64,
    pub seed: u64,
    pub add_noise: bool,
    pub leftover_noise: bool,
    /// Overrides the seeded initial noise.
    pub noise: Option<Tensor>,
    /// ComfyUI's denoise mask (TI2V's `noise_mask`), broadcastable to the
    /// latent: where it is 0 the model sees the input latent, clean, and the
    /// denoised value is the input latent, at every evaluation.
    pub noise_mask: Option<Tensor>,
}

/// Which context a model evaluation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    Positive,
    Negative,
}

/// One model evaluation the pass asks for.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub sigma: f32,
    /// What the model is conditioned on: `σ·1000`, or diffusers' integers.
    pub timestep: f32,
    pub cond: Cond,
    /// Steps finished in this pass, and the pass's step count.
    pub step: usize,
    pub steps: usize,
}

/// A flow model as the pass sees it: a velocity for `x` under one context.
pub trait Denoiser {
    fn velocity(&mut self, x: &Tensor, call: &Call) -> candle_core::Result<Tensor>;
}

/// Standard-normal noise shaped like `x` for the interval (σ, σ_next).
pub type NoiseFn<'a> = dyn FnMut(&Tensor, f32, f32) -> candle_core::Result<Tensor> + 'a;

/// Sees a guided evaluation: (sigma, x, denoised).
pub type ObserveFn<'a> = dyn FnMut(f32, &Tensor, &Tensor) + 'a;

/// What the caller may hook into a pass.
pub struct PassIo<'a> {
    /// After each step: (step index in the pass, steps in the pass, sigma).
    pub on_step: &'a mut StepCallback<'a>,
    /// Replaces the noise ancestral and SDE samplers draw: by default the
    /// seeded generator (ComfyUI's default noise sampler), or for the
    /// Brownian-tree samplers ([`super::uses_brownian_tree`]) a torchsde
    /// Brownian tree over this pass's sigmas, seeded with `seed`.
    pub noise: Option<&'a mut NoiseFn<'a>>,
    /// Sees every guided evaluation: (sigma, x, denoised), as ComfyUI's
    /// sampler callback does.
    pub observe: Option<&'a mut ObserveFn<'a>>,
}

/// Why a pass did not run.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The settings or the state are wrong; nothing was computed.
    #[error("{0}")]
    Input(String),
    #[error("{context}: {source}")]
    Tensor {
        context: String,
        source: candle_core::Error,
    },
}

type Result<T> = std::result::Result<T, PassError>;

fn tensor_err(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> PassError {
    let context = context.into();
    move |source| PassError::Tensor { context, source }
}

/// What a pass did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `x / (1 − σ_last)`; `None` when the cut is empty and ComfyUI hands
    /// the input latent back untouched.
    pub out: Option<Tensor>,
    pub steps: usize,
    pub model_calls: usize,
}

impl KSampler {
    /// The whole sigma list (steps + 1 values), before the start/end cut.
    pub fn full_sigmas(&self) -> Result<Vec<f32>> {
        match &self.sigmas {
            Some(s) if s.len() < 2 => Err(PassError::Input(
                "sigmas needs at least two values (the last is usually 0)".into(),
            )),
            Some(s) => Ok(s.clone()),
            None => sigmas::for_sampler(
                self.scheduler.name(),
                self.steps,
                self.shift,
                self.sampler.name,
            )
            .map_err(PassError::Input),
        }
    }

    /// The sigmas this pass walks, checked; `None` when the range is empty.
    pub fn cut_sigmas(&self) -> Result<Option<Vec<f32>>> {
        let full = self.full_sigmas()?;
        let Some(cut) = cut(&full, self.start, self.end, self.leftover_noise) else {
            return Ok(None);
        };
        check_sigmas(&cut)?;
        Ok(Some(cut))
    }

    /// Model evaluations a pass over `cut` makes with one evaluation per
    /// step (what a plan reports; two-stage samplers make more).
    pub fn planned_calls(&self, cut: &[f32]) -> usize {
        (cut.len() - 1) * if self.needs_uncond() { 2 } else { 1 }
    }

    /// Whether each evaluation runs the uncond pass too: cfg ≠ 1, or a
    /// cfg_pp sampler (ComfyUI's `disable_cfg1_optimization`).
    pub fn needs_uncond(&self) -> bool {
        guidance::needs_uncond(self.cfg) || self.sampler.cfg_pp()
    }

    /// Runs the pass on `latent` (model space, on the denoiser's device),
    /// continuing and updating `state`. `what` starts error messages
    /// ("sampling with 'high'").
    pub fn run(
        &self,
        model: &mut dyn Denoiser,
        latent: &Tensor,
        state: &mut SolverState,
        io: PassIo,
        what: &str,
    ) -> Result<Outcome> {
        let full = self.full_sigmas()?;
        let Some(cut) = self.cut_sigmas()? else {
            return Ok(Outcome {
                out: None,
                steps: 0,
                model_calls: 0,
            });
        };
        check_continuation(state, self, &cut)?;
        let latent = latent.to_dtype(DType::F32).map_err(tensor_err("latent"))?;
        let x = self.initial_x(state, &latent, cut[0])?;
        let inpaint = self.inpaint(&latent)?;
        // KSamplerX0Inpaint: x_in = x·m + latent·(1 − m), den likewise.
        let mix = |t: &Tensor| -> candle_core::Result<Tensor> {
            match &inpaint {
                Some((m, keep)) => t.broadcast_mul(m)? + keep,
                None => Ok(t.clone()),
            }
        };
        let model_t = timesteps(self, &full);
        let steps = cut.len() - 1;
        let needs_uncond = self.needs_uncond();
        let cfg_pp = self.sampler.cfg_pp();
        let mut calls = 0usize;
        // The uncond prediction of the last evaluation, for the cfg_pp samplers.
        let last_uncond = std::cell::RefCell::new(None::<Tensor>);
        // Steps finished in this pass, for the NaN messages.
        let done = std::cell::Cell::new(0usize);
        let PassIo {
            on_step,
            noise: custom_noise,
            mut observe,
        } = io;
        let mut denoise = |x: &Tensor, sigma: f32| -> candle_core::Result<Tensor> {
            let step = done.get();
            if step > 0 && !all_finite(x)? {
                candle_core::bail!(
                    "the latent holds NaN or Inf after step {step} of {steps} (sigma {sigma}); stopping"
                );
            }
            let mut call = Call {
                sigma,
                timestep: model_t(sigma),
                cond: Cond::Positive,
                step,
                steps,
            };
            let x_in = mix(x)?;
            let mut denoised = |call: &Call| -> candle_core::Result<Tensor> {
                let v = model.velocity(&x_in, call)?;
                calls += 1;
                &x_in - (v * sigma as f64)?
            };
            let cond = denoised(&call)?;
            let d = if needs_uncond {
                call.cond = Cond::Negative;
                let uncond = denoised(&call)?;
                let d = guidance::cfg_combine(&cond, &uncond, self.cfg)?;
                if cfg_pp {
                    *last_uncond.borrow_mut() = Some(uncond);
                }
                d
            } else {
                cond
            };
            let d = mix(&d)?;
            if let Some(f) = observe.as_mut() {
                f(sigma, x, &d);
            }
            Ok(d)
        };
        let mut on_step = |i: usize, n: usize, sigma: f32| {
            done.set(i + 1);
            on_step(i, n, sigma)
        };
        // ComfyUI's default noise sampler: a generator seeded like the initial
        // noise; the SDE samplers ComfyUI gives a Brownian tree get one over
        // this pass's sigmas instead (built at the first draw, for x's shape).
        let mut gen = noise::TorchGenerator::new(self.seed);
        let mut tree: Option<brownian::BrownianTree> = None;
        let brownian = super::uses_brownian_tree(self.sampler.name);
        let seed = self.seed;
        let mut seeded = |x: &Tensor, s: f32, sn: f32| -> candle_core::Result<Tensor> {
            let v = if brownian {
                tree.get_or_insert_with(|| {
                    brownian::BrownianTree::for_sigmas(&cut, seed, x.elem_count())
                })
                .draw(s, sn)
            } else {
                gen.randn(x.elem_count())
            };
            Tensor::from_vec(v, x.shape(), x.device())
        };
        let uncond = || last_uncond.borrow().clone();
        let mut hooks = Hooks {
            denoise: &mut denoise,
            noise: match custom_noise {
                Some(f) => f,
                None => &mut seeded,
            },
            on_step: &mut on_step,
            uncond: &uncond,
            shift: self.shift,
        };
        state.total_steps = Some(full.len() - 1);
        state.claim(self.sampler.name).map_err(tensor_err(what))?;
        let x = (self.sampler.run)(&mut hooks, x, &cut, state).map_err(tensor_err(what))?;
        let last = *cut.last().expect("cut is non-empty");
        if !all_finite(&x).map_err(tensor_err("the final latent"))? {
            return Err(PassError::Input(format!(
                "{what}: the latent holds NaN or Inf after the last step \
                 ({steps} of {steps}, sigma {last}); stopping"
            )));
        }
        // out = x / (1 − σ_last): ComfyUI's inverse noise scaling (identity when σ_last = 0).
        let out =
            samplers::div_scalar(&x, 1.0 - last).map_err(tensor_err("inverse noise scaling"))?;
        state.sigma = Some(last);
        state.handoff = Some((out.clone(), x));
        Ok(Outcome {
            out: Some(out),
            steps,
            model_calls: calls,
        })
    }

    /// The noise mask on the latent's device with `latent·(1 − m)`, or
    /// `None` without a mask.
    fn inpaint(&self, latent: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let Some(m) = &self.noise_mask else {
            return Ok(None);
        };
        let (md, ld) = (m.dims(), latent.dims());
        let fits = md.len() == ld.len()
            && md.iter().zip(ld).all(|(&a, &b)| a == b || a == 1)
            && md.get(2) == ld.get(2);
        if !fits {
            return Err(PassError::Input(format!(
                "noise_mask has shape {md:?}, which does not fit the latent {ld:?} \
                 (it needs the latent's frames, height and width; batch and channels may be 1)"
            )));
        }
        let m = m
            .to_dtype(DType::F32)
            .and_then(|m| m.to_device(latent.device())?.broadcast_as(ld)?.contiguous())
            .map_err(tensor_err("noise_mask"))?;
        let keep = m
            .affine(-1.0, 1.0)
            .and_then(|inv| latent * inv)
            .map_err(tensor_err("noise_mask"))?;
        Ok(Some((m, keep)))
    }

    /// `x = σ0·noise + (1−σ0)·latent`, ComfyUI's CONST noise scaling. When
    /// the latent is exactly the output of the pass that wrote `state`, the
    /// solver's own x is reused, so a split run equals the single run bit
    /// for bit.
    fn initial_x(&self, state: &SolverState, latent: &Tensor, s0: f32) -> Result<Tensor> {
        if let (false, Some((out, x))) = (self.add_noise, &state.handoff) {
            if out.dims() == latent.dims() && same_values(out, latent) {
                return Ok(x.clone());
            }
        }
        let noise = if self.add_noise {
            match &self.noise {
                Some(n) => {
                    if n.dims() != latent.dims() {
                        return Err(PassError::Input(format!(
                            "noise has shape {:?} but the latent is {:?}",
                            n.dims(),
                            latent.dims()
                        )));
                    }
                    n.to_dtype(DType::F32)
                        .and_then(|n| n.to_device(latent.device()))
                        .map_err(tensor_err("noise"))?
                }
                None => {
                    let v = noise::torch_randn(self.seed, latent.elem_count());
                    Tensor::from_vec(v, latent.shape(), latent.device())
                        .map_err(tensor_err("noise"))?
                }
            }
        } else {
            latent.zeros_like().map_err(tensor_err("noise"))?
        };
        ((&noise * s0 as f64).and_then(|a| a + (latent * (1.0 - s0) as f64)?))
            .map_err(tensor_err("noise scaling"))
    }
}

/// Cuts the full list (steps + 1 values) to the steps `start..end`.
///
/// Returns `None` when ComfyUI would run nothing and hand back the input latent.
/// With `leftover_noise == false` the last kept sigma is forced to 0 (a full
/// denoise), as `return_with_leftover_noise: disable` does.
pub fn cut(
    full: &[f32],
    start: usize,
    end: Option<usize>,
    leftover_noise: bool,
) -> Option<Vec<f32>> {
    let mut sigmas = full.to_vec();
    if let Some(end) = end {
        if end < sigmas.len() - 1 {
            sigmas.truncate(end + 1);
            if !leftover_noise {
                if let Some(last) = sigmas.last_mut() {
                    *last = 0.0;
                }
            }
        }
    }
    if start < sigmas.len() - 1 {
        Some(sigmas[start..].to_vec())
    } else {
        None
    }
}

/// The timestep the model sees for each sigma. Wan is trained on `σ·1000`;
/// diffusers' UniPC (sampler `unipc_flow`) feeds integers instead, truncated
/// from its float64 sigmas, so for its own schedules the exact list is used
/// (the f32 sigma alone can land on the other side of an integer).
fn timesteps(k: &KSampler, full: &[f32]) -> impl Fn(f32) -> f32 {
    let integer = k.sampler.integer_timesteps();
    let exact: Vec<(f32, f32)> = match (&k.sigmas, integer) {
        (None, true) => sigmas::integer_timesteps(k.scheduler.name(), k.steps, k.shift)
            .map(|ts| full.iter().copied().zip(ts).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    move |sigma: f32| {
        let scaled = sigmas::timestep(sigma);
        if !integer {
            return scaled;
        }
        exact
            .iter()
            .find(|(s, _)| s.to_bits() == sigma.to_bits())
            .map_or(scaled.trunc(), |&(_, t)| t)
    }
}

/// A state that already ran must be continued where it stopped, without new noise.
fn check_continuation(state: &SolverState, k: &KSampler, cut: &[f32]) -> Result<()> {
    if state.is_fresh() {
        return Ok(());
    }
    if state.sampler != k.sampler.name {
        return Err(PassError::Input(format!(
            "the sampler state was written by '{}'; continue it with the same sampler, not '{}'",
            state.sampler, k.sampler.name
        )));
    }
    if k.add_noise {
        return Err(PassError::Input(
            "continuing a sampler state needs add_noise: false (the latent already carries its noise)"
                .into(),
        ));
    }
    if let Some(stop) = state.sigma {
        if stop.to_bits() != cut[0].to_bits() {
            return Err(PassError::Input(format!(
                "the sampler state stopped at sigma {stop}, but this pass starts at sigma {}",
                cut[0]
            )));
        }
    }
    Ok(())
}

/// Sigmas a pass can run on: finite, within [0, 1], and not ending at 1
/// (the output is divided by 1 − σ_last).
fn check_sigmas(s: &[f32]) -> Result<()> {
    if let Some(bad) = s
        .iter()
        .find(|v| !(v.is_finite() && (0.0..=1.0).contains(*v)))
    {
        return Err(PassError::Input(format!(
            "sigmas must lie in [0, 1] for a flow model, got {bad} in {s:?}"
        )));
    }
    if s.last().is_some_and(|&l| l >= 1.0) {
        return Err(PassError::Input(format!(
            "the last sigma must be below 1 (usually 0), got {s:?}"
        )));
    }
    Ok(())
}

/// Whether every value of `t` is finite, from one sum: a NaN or Inf
/// anywhere makes the sum non-finite, and one reduction per step is cheap
/// next to a forward.
pub fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    let s = t.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok(s.is_finite())
}

fn same_values(a: &Tensor, b: &Tensor) -> bool {
    a.ne(b)
        .and_then(|m| m.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>())
        .map(|n| n == 0.0)
        .unwrap_or(false)
}
