//! The sampler interface: a sampler walks a sigma list, calling out to a
//! denoiser and a noise source, and may carry multistep history across passes.
//!
//! Samplers only see closures, so the same code drives a resident model, a
//! streamed one, or the analytic denoiser the ComfyUI fixtures use.

use candle_core::{Result, Tensor};

/// Called after each step with (step index within the pass, steps in the pass, sigma).
pub type StepCallback<'a> = dyn FnMut(usize, usize, f32) + 'a;

/// Everything a sampler calls out to.
pub struct Hooks<'a> {
    /// The (guided) data prediction `D(x, σ)`, i.e. x0.
    pub denoise: &'a mut dyn FnMut(&Tensor, f32) -> Result<Tensor>,
    /// Fresh standard-normal noise shaped like `x` for the interval (σ, σ_next).
    /// Ancestral and SDE samplers draw from it in step order.
    pub noise: &'a mut dyn FnMut(&Tensor, f32, f32) -> Result<Tensor>,
    pub on_step: &'a mut StepCallback<'a>,
    /// The uncond prediction `U` behind the last `denoise` call, when the
    /// uncond pass ran (the `*_cfg_pp` samplers need it; the pass always runs
    /// it for them, even at cfg 1, as ComfyUI's `disable_cfg1_optimization`).
    pub uncond: &'a dyn Fn() -> Option<Tensor>,
    /// The model's flow shift (ComfyUI's ModelSamplingSD3), for the samplers
    /// that ask the model's sampling object for a sigma (the SDE ones).
    pub shift: f32,
}

/// A solver's multistep history, handed from one pass to the next so that a
/// run split across two experts continues one solver exactly (the official Wan
/// and diffusers pipelines use one scheduler for both experts). ComfyUI instead
/// restarts the history at every KSamplerAdvanced pass; an empty state does that.
#[derive(Clone, Debug, Default)]
pub struct SolverState {
    /// The sampler that wrote this state; another sampler may not continue it.
    pub sampler: String,
    /// Sigmas of the stored history entries, oldest first.
    pub sigmas: Vec<f32>,
    /// The history tensors (data predictions or derivatives, per sampler), oldest first.
    pub history: Vec<Tensor>,
    /// The last sample before a corrector step (UniPC), if any.
    pub last_sample: Option<Tensor>,
    /// Steps the solver has taken in all passes so far.
    pub steps_done: usize,
    /// Solver-specific counter (UniPC's lower_order_nums).
    pub counter: usize,
    /// The sigma list of the whole run when the caller knows it (UniPC's
    /// lower-order-final rule depends on the total step count).
    pub total_steps: Option<usize>,
    /// The sigma the last pass stopped at; the next pass must start there.
    pub sigma: Option<f32>,
    /// (the latent the last pass returned, the solver's x it came from), so a
    /// continuing pass can skip the `x/(1−σ)·(1−σ)` round trip.
    pub handoff: Option<(Tensor, Tensor)>,
    /// Set on states a script shares between passes (`sampler_state()`): the
    /// passes are parts of one run, so a sampler that plans over the run
    /// (ComfyUI's UniPC: its order cap and lower-order final steps) plans over
    /// `total_steps` from `steps_done`, not over the pass. Left false, every
    /// pass is a run of its own, as each KSamplerAdvanced pass is in ComfyUI.
    pub spans_passes: bool,
    /// The order of the last predictor step (UniPC's corrector repeats it).
    pub last_order: usize,
    /// (the x the sampler returned, its own state behind it) for solvers that
    /// do not integrate x itself (ComfyUI's UniPC runs on x/√(1+σ²)), so a
    /// continuing pass resumes from the exact state rather than a round trip.
    pub solver_x: Option<(Tensor, Tensor)>,
    /// Sampler-specific scalar history (previous step sizes, σ_down, log-SNRs).
    pub scalars: Vec<f32>,
}

/// A state shared between the script and the passes that update it.
pub type SharedState = std::rc::Rc<std::cell::RefCell<SolverState>>;

impl SolverState {
    /// Whether a pass starts from scratch (ComfyUI's behaviour).
    pub fn is_fresh(&self) -> bool {
        self.steps_done == 0
    }

    /// Checks that `sampler` may continue this state, and claims a fresh one.
    pub fn claim(&mut self, sampler: &str) -> Result<()> {
        if self.is_fresh() {
            *self = SolverState {
                sampler: sampler.to_string(),
                total_steps: self.total_steps,
                spans_passes: self.spans_passes,
                ..Default::default()
            };
            return Ok(());
        }
        if self.sampler != sampler {
            candle_core::bail!(
                "this sampler state was written by '{}' and cannot be continued by '{sampler}'",
                self.sampler
            );
        }
        Ok(())
    }

    /// Keeps the newest `n` history entries.
    pub fn keep_last(&mut self, n: usize) {
        let drop = self.history.len().saturating_sub(n);
        self.history.drain(..drop);
        let drop = self.sigmas.len().saturating_sub(n);
        self.sigmas.drain(..drop);
    }
}

/// Signature every sampler implements.
pub type SamplerFn = fn(&mut Hooks, Tensor, &[f32], &mut SolverState) -> Result<Tensor>;

/// Looks a sampler up by its ComfyUI (or baton) name.
pub fn find(name: &str) -> Option<SamplerFn> {
    super::SAMPLER_TABLE
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
}

/// Runs the sampler `name` over `sigmas`, continuing `state` if it is not fresh.
pub fn run(
    name: &str,
    hooks: &mut Hooks,
    x: Tensor,
    sigmas: &[f32],
    state: &mut SolverState,
) -> Result<Tensor> {
    let Some(f) = find(name) else {
        candle_core::bail!(
            "unknown sampler '{name}' (available: {})",
            super::sampler_names().join(", ")
        )
    };
    state.claim(name)?;
    f(hooks, x, sigmas, state)
}

/// `x / s` as a true f32 division (candle's `Tensor / f64` multiplies by the
/// reciprocal, which is not bit-identical to ComfyUI's division).
pub fn div_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
    x.broadcast_div(&scalar(s, x)?)
}

/// `x · s` with `s` rounded to f32 first, as torch does with a Python scalar.
pub fn mul_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
    x.broadcast_mul(&scalar(s, x)?)
}

/// A 0-d tensor of `x`'s dtype and device holding `s`.
pub fn scalar(s: f32, x: &Tensor) -> Result<Tensor> {
    Tensor::new(s, x.device())?.to_dtype(x.dtype())
}
