//! The session's state: the device, the registry of loaded models, the
//! ledger, and the records a run leaves (timeline, journal). The verbs that
//! act on it live beside this file, one job each: `load` (reading a model
//! in), `lifecycle` (delete, offload, reload), `compute` (predict and
//! sample), `coding` (text encoding and the VAE), `loras`.

use super::error::{Result, RuntimeError};
use super::journal::Journal;
use super::ledger::Ledger;
use super::memstat;
use super::options::SampleReport;
use super::registry::{LoadedModel, ModelId, Registry};
use super::size::mib;
use super::timeline::{Mark, Timeline};
use candle_core::Device;
use std::path::PathBuf;

pub struct Runtime {
    pub device: Device,
    pub(super) ledger: Ledger,
    pub(super) registry: Registry,
    /// Directories searched for relative model paths, in order.
    pub model_roots: crate::roots::ModelRoots,
    /// Where relative output paths go.
    pub out_dir: PathBuf,
    pub last_sample: SampleReport,
    /// Largest offloaded total seen since the last `reset_offload_peak`.
    pub(super) offload_peak: u64,
    /// Headers only, no math: the runtime `baton plan` runs scripts on.
    pub(super) dry: bool,
    /// Every ledger change and model use, in order.
    pub timeline: Timeline,
    /// Model files being read into the page cache (`prefetch_model`).
    pub(super) prefetches: Vec<super::prefetch::Prefetch>,
    /// Loads and sampling passes, for the run manifest. Only the runtime
    /// writes it, as each verb succeeds.
    pub journal: Journal,
    /// On CUDA: the driver's used bytes when the session started (after the
    /// warm-up kernels); `vram()` holds the ledger against the rise since.
    driver_baseline: Option<u64>,
}

impl Runtime {
    pub fn new(device: Device, budget: Option<u64>) -> Self {
        memstat::configure_allocator();
        let driver = super::device::driver_memory(&device);
        // On a card the default budget leaves a tenth of its free memory to
        // activations, which the ledger does not charge.
        let budget = budget.unwrap_or_else(|| match driver {
            Some(d) => d.free / 10 * 9,
            None => memstat::total_ram(),
        });
        Self {
            driver_baseline: driver.map(|d| d.used()),
            device,
            ledger: Ledger::new(budget),
            registry: Registry::default(),
            model_roots: Default::default(),
            out_dir: PathBuf::from("out"),
            last_sample: SampleReport::default(),
            offload_peak: 0,
            dry: false,
            timeline: Timeline::default(),
            prefetches: Vec::new(),
            journal: Default::default(),
        }
    }

    /// A runtime that reads headers but no weights and computes nothing:
    /// loads, deletes and the ledger behave as in a real run, and operations
    /// return correctly shaped stand-ins (see `runtime::dry`).
    pub fn new_dry(budget: Option<u64>) -> Self {
        Self {
            dry: true,
            ..Self::new(Device::Cpu, budget)
        }
    }

    /// The driver's memory now and how it compares with the ledger; `None`
    /// on the CPU. Synchronises the device first.
    pub fn driver_check(&self) -> Option<(super::device::DriverMemory, super::device::LeakCheck)> {
        let now = super::device::driver_memory(&self.device)?;
        let check = super::device::leak_check(self.driver_baseline?, now, self.ledger.used());
        if check.leak {
            tracing::warn!(
                "device memory and ledger disagree: the driver shows {} held by this session, \
                 the ledger {} (gap {} MiB)",
                mib(check.driver_held),
                mib(check.ledger),
                check.gap / (1 << 20)
            );
        }
        Some((now, check))
    }

    /// Adds an event to the timeline with the ledger as it is now.
    pub fn record(&mut self, at: &str, kind: &str, model: &str, activations: u64, note: String) {
        self.timeline.record(
            &self.ledger,
            Mark {
                at,
                kind,
                model,
                activations,
                note,
            },
        );
    }

    /// Records a use of a model by the verb `kind` at script position `at`.
    pub(super) fn note_use(
        &mut self,
        id: ModelId,
        at: &str,
        kind: &str,
        activations: u64,
        note: String,
    ) {
        let name = self
            .registry
            .get(id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        self.record(at, kind, &name, activations, note);
    }

    /// True for `baton plan`'s runtime, which computes nothing.
    pub fn is_dry(&self) -> bool {
        self.dry
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn set_budget(&mut self, bytes: u64) {
        self.set_budget_at(bytes, "")
    }

    /// `set_budget`, recorded on the timeline at script position `at`.
    pub fn set_budget_at(&mut self, bytes: u64, at: &str) {
        self.ledger.set_budget(bytes);
        tracing::info!("vram budget set to {}", mib(bytes));
        self.record(at, "budget", "", 0, mib(bytes));
    }

    pub fn models(&self) -> impl Iterator<Item = &LoadedModel> {
        self.registry.iter()
    }

    pub fn model(&self, id: ModelId) -> Result<&LoadedModel> {
        self.registry.get(id).map_err(RuntimeError::Model)
    }

    /// Bytes of all the model's weights in its resident dtype, wherever
    /// they are (the ledger's count).
    pub fn model_bytes(&self, id: ModelId) -> Result<u64> {
        self.model(id)?;
        Ok(self.ledger.get(id).map_or(0, |e| e.total()))
    }

    pub fn is_deleted(&self, id: ModelId) -> bool {
        self.registry.is_deleted(id)
    }

    pub fn offload_peak(&self) -> u64 {
        self.offload_peak
    }

    pub fn reset_offload_peak(&mut self) {
        self.offload_peak = self.ledger.offloaded();
    }

    /// Finds a model file: absolute, or under one of the model roots.
    pub fn resolve_model_path(&self, path: &str) -> Result<PathBuf> {
        self.model_roots.resolve(path).map_err(RuntimeError::Input)
    }
}
