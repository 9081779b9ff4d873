//! Models whose prediction is a script function (`model_from_fn`).
//!
//! Such a model holds no weights: the registry keeps the host's callable as
//! an opaque value and the ledger counts it at 0 bytes. The runtime cannot
//! call it (only the script engine can), so a pass on it is split in three:
//! [`Runtime::begin_external_sample`] checks the options and settles the
//! cases where nothing runs (an empty cut, a dry run), [`run_external_pass`]
//! runs the KSamplerAdvanced pass over the caller's [`Denoiser`] without the
//! runtime (so the function may call back into it), and
//! [`Runtime::finish_external_sample`] records what ran.

use super::error::{tensor_err, Result};
use super::info::ModelInfo;
use super::journal::LoadRecord;
use super::ledger::Admission;
use super::options::{SampleOptions, SampleReport};
use super::registry::{LoadedModel, ModelId, Weights};
use super::runtime::Runtime;
use crate::sampling::ksampler::{Denoiser, PassIo};
use crate::sampling::samplers::{SolverState, StepCallback};
use candle_core::{DType, Device, Tensor};

/// What `arch` says of a scripted model.
pub const ARCH: &str = "scripted";

impl Runtime {
    /// Registers a model whose prediction is `func` (the host's callable),
    /// at 0 bytes: it holds no weights.
    pub fn add_scripted_model(
        &mut self,
        name: Option<String>,
        func: Box<dyn std::any::Any>,
        at: &str,
    ) -> ModelId {
        let id = self.registry.next_id();
        let name = name.unwrap_or_else(|| format!("fn{id}"));
        let info = ModelInfo {
            arch: ARCH,
            variant: "fn".into(),
            layout: "script",
            dtype: DType::F32,
            params: 0,
            blocks: 0,
        };
        self.registry.insert(LoadedModel {
            id,
            name: name.clone(),
            path: at.into(),
            info,
            loaded_at: at.to_string(),
            weights: Weights::Scripted(func),
        });
        self.ledger.admit(id, &name, Admission::default());
        self.journal.loads.push(LoadRecord {
            name: name.clone(),
            requested: format!("model_from_fn at {at}"),
            path: at.into(),
            arch: format!("{ARCH} fn"),
        });
        tracing::info!("model_from_fn {name}: a script function, 0 MiB (no weights)");
        self.record(at, "load", &name, 0, "script function, no weights".into());
        id
    }

    /// The checks `sample` makes before a pass on a scripted model. Returns
    /// the latent to hand back when nothing is to run (an empty cut, or a
    /// dry run, which does not call script functions), recorded.
    pub fn begin_external_sample(
        &mut self,
        id: ModelId,
        latent: &Tensor,
        o: &SampleOptions,
        at: &str,
    ) -> Result<Option<Tensor>> {
        // Back "on the device" after offload_model, as any model in use is
        // (0 bytes move: it holds none).
        self.ensure_on_device(id, at)?;
        let name = self.model(id)?.name.clone();
        let k = &o.pass;
        k.full_sigmas()?;
        o.check_guidance()?;
        let Some(cut) = k.cut_sigmas()? else {
            self.journal_sample(&name, k, 0.0);
            return Ok(Some(latent.clone()));
        };
        if self.dry {
            let note = format!(
                "{} steps, {} calls of a script function (not run while planning)",
                cut.len() - 1,
                k.planned_calls(&cut)
            );
            let out = latent.to_dtype(DType::F32).map_err(tensor_err("latent"))?;
            self.record(at, "sample", &name, 0, note);
            self.journal_sample(&name, k, 0.0);
            return Ok(Some(out));
        }
        Ok(None)
    }

    /// Records a `predict` the host made on the scripted model `id`.
    pub fn finish_external_predict(&mut self, id: ModelId, at: &str) -> Result<()> {
        let name = self.model(id)?.name.clone();
        let note = if self.dry {
            "script function (not run while planning)"
        } else {
            "script function"
        };
        self.record(at, "predict", &name, 0, note.into());
        Ok(())
    }

    /// Records a pass [`run_external_pass`] ran on model `id`.
    pub fn finish_external_sample(
        &mut self,
        id: ModelId,
        o: &SampleOptions,
        report: SampleReport,
        at: &str,
    ) -> Result<()> {
        let name = self.model(id)?.name.clone();
        let note = format!(
            "{} steps, {} calls of a script function, {:.3}s",
            report.steps_run, report.model_calls, report.seconds
        );
        tracing::info!("sampled {name}: {note}");
        self.journal_sample(&name, &o.pass, report.seconds);
        self.last_sample = report;
        self.record(at, "sample", &name, 0, note);
        Ok(())
    }
}

/// A KSamplerAdvanced pass over `model` on the host, continuing `o.state`
/// when given; the runtime is not involved, so `model` may call back into it.
pub fn run_external_pass(
    model: &mut dyn Denoiser,
    latent: &Tensor,
    o: &SampleOptions,
    what: &str,
    on_step: &mut dyn FnMut(usize, usize, f32),
) -> Result<(Tensor, SampleReport)> {
    let started = std::time::Instant::now();
    let mut local = SolverState::default();
    let mut shared = o.state.as_ref().map(|s| s.borrow_mut());
    let state: &mut SolverState = match shared.as_deref_mut() {
        Some(s) => s,
        None => &mut local,
    };
    let latent = latent
        .to_dtype(DType::F32)
        .and_then(|l| l.to_device(&Device::Cpu))
        .map_err(tensor_err("latent"))?;
    let mut each_step = |i: usize, n: usize, sigma: f32| on_step(i, n, sigma);
    let io = PassIo {
        on_step: &mut each_step as &mut StepCallback,
        noise: None,
        observe: None,
    };
    let outcome = o.pass.run(model, &latent, state, io, what)?;
    let out = outcome.out.expect("a non-empty cut runs");
    let report = SampleReport {
        steps_run: outcome.steps,
        model_calls: outcome.model_calls,
        streamed_bytes: 0,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((out, report))
}
