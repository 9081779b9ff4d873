//! The runtime proper: load, delete, offload, forward and sample, with every
//! device byte going through the ledger.

use super::cancel;
use super::ledger::{Entry, Ledger};
use super::memstat;
use super::registry::{LoadedModel, ModelId, ModelInfo, Registry, Weights};
use super::residency::WanResident;
use super::size::{count_label, mib};
use super::text_encoder;
use super::timeline::{Mark, Timeline};
use super::vae;
use super::{activations, dry};
use crate::checkpoint::{detect, CheckpointError, CheckpointSource, Detected, Header, TensorEntry};
use crate::sampling::samplers::{SharedState, SolverState};
use crate::sampling::{guidance, ksampler, noise, samplers, sigmas};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Budget(String),
    #[error("{0}")]
    Input(String),
    #[error("{context}: {}", plain_error(.source))]
    Tensor {
        context: String,
        source: candle_core::Error,
    },
}

type Result<T> = std::result::Result<T, RuntimeError>;

/// `apply_lora` / `remove_lora`, kept in their own file.
mod lora;

/// A candle error as one readable message: without the backtrace candle
/// attaches when RUST_BACKTRACE is set, which means nothing to a script author.
pub fn plain_error(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => plain_error(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", plain_error(inner))
        }
        candle_core::Error::WithPath { inner, path } => {
            format!("{}: {}", path.display(), plain_error(inner))
        }
        other => other.to_string(),
    }
}

fn tensor_err(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Tensor { context, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadPolicy {
    /// Keep as many whole blocks resident as fit, stream the rest.
    Auto,
    /// Fail when the model does not fit.
    Never,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub name: Option<String>,
    pub offload: OffloadPolicy,
    /// Resident dtype; `None` keeps the file's dtype.
    pub dtype: Option<DType>,
    pub heads: Option<usize>,
    /// A SentencePiece model for a text encoder that carries none.
    pub tokenizer: Option<PathBuf>,
    /// Scan every weight for NaN/Inf before loading (reads the whole file).
    pub check_weights: bool,
    /// Read streamed blocks one ahead on a helper thread (two buffers).
    pub prefetch: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            name: None,
            offload: OffloadPolicy::Auto,
            dtype: None,
            heads: None,
            tokenizer: None,
            check_weights: false,
            prefetch: true,
        }
    }
}

/// `sample` settings, KSamplerAdvanced semantics (see `sampling::ksampler`).
#[derive(Debug, Clone)]
pub struct SampleOptions {
    pub positive: Tensor,
    pub negative: Option<Tensor>,
    pub steps: usize,
    pub start: usize,
    pub end: Option<usize>,
    pub cfg: f64,
    pub sampler: String,
    pub scheduler: String,
    pub shift: f32,
    pub seed: u64,
    pub add_noise: bool,
    pub leftover_noise: bool,
    /// Overrides steps/scheduler/shift with an explicit list (steps + 1 values).
    pub sigmas: Option<Vec<f32>>,
    /// Overrides the seeded noise.
    pub noise: Option<Tensor>,
    /// The solver history to continue and update; None starts fresh, as ComfyUI does.
    pub state: Option<SharedState>,
}

/// What one `sample` call did, for the log and the summary.
#[derive(Debug, Clone, Default)]
pub struct SampleReport {
    pub steps_run: usize,
    pub model_calls: usize,
    pub streamed_bytes: u64,
    pub seconds: f64,
}

pub struct Runtime {
    pub device: Device,
    ledger: Ledger,
    registry: Registry,
    /// Directories searched for relative model paths, in order.
    pub model_roots: crate::roots::ModelRoots,
    /// Where relative output paths go.
    pub out_dir: PathBuf,
    pub last_sample: SampleReport,
    /// Largest offloaded total seen since the last `reset_offload_peak`.
    offload_peak: u64,
    /// Headers only, no math: the runtime `baton plan` runs scripts on.
    dry: bool,
    /// Every ledger change and model use, in order.
    pub timeline: Timeline,
    /// Model files being read into the page cache (`prefetch_model`).
    prefetches: Vec<super::prefetch::Prefetch>,
    /// Loads and sampling passes, for the run manifest.
    pub journal: super::journal::Journal,
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

    /// Starts reading a model file into the page cache in the background, so
    /// a later `load_model` of it reads memory, not disk. Returns the file.
    pub fn prefetch_model(&mut self, path: &str, at: &str) -> Result<PathBuf> {
        let path = self.resolve_model_path(path)?;
        let size = std::fs::metadata(&path)
            .map_err(|source| CheckpointError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        self.prefetches
            .retain(|p| !p.is_finished() || p.path != path);
        if !self.dry && !self.prefetches.iter().any(|p| p.path == path) {
            self.prefetches
                .push(super::prefetch::Prefetch::start(&path));
        }
        let note = format!("reading {} into the page cache", mib(size));
        tracing::info!("prefetch {}: {note}", path.display());
        self.record(at, "prefetch", &default_name(&path), 0, note);
        Ok(path)
    }

    /// Waits for a prefetch of `path`, if one is running, so the load does
    /// not race it for the disk.
    fn finish_prefetch(&mut self, path: &Path) {
        let Some(i) = self.prefetches.iter().position(|p| p.path == path) else {
            return;
        };
        let p = self.prefetches.swap_remove(i);
        let running = !p.is_finished();
        let waited = std::time::Instant::now();
        match p.wait() {
            Ok((bytes, secs)) if running => tracing::info!(
                "prefetch of {} still running: waited {:.2}s for the rest ({} in {secs:.2}s)",
                path.display(),
                waited.elapsed().as_secs_f64(),
                mib(bytes)
            ),
            Ok((bytes, secs)) => tracing::debug!(
                "prefetch of {} done: {} in {secs:.2}s",
                path.display(),
                mib(bytes)
            ),
            Err(e) => tracing::warn!("{e}"),
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

    /// Records a use of a model by a primitive that works on it directly
    /// (text encoding, VAE decode and encode).
    pub fn note_use(&mut self, id: ModelId, at: &str, kind: &str, activations: u64, note: String) {
        let name = self
            .registry
            .get(id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        self.record(at, kind, &name, activations, note);
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

    /// Loads a Wan DiT checkpoint under the budget. `at` names the script
    /// position for messages. Nothing changes in the session if it fails.
    pub fn load_model(&mut self, path: &str, opts: &LoadOptions, at: &str) -> Result<ModelId> {
        let path = self.resolve_model_path(path)?;
        self.finish_prefetch(&path);
        let header = Header::read(&path)?;
        if opts.check_weights {
            warn_non_finite(&header)?;
        }
        let fp8 = opts.dtype == Some(DType::F8E4M3);
        let is_te = text_encoder::is_text_encoder(&header);
        if fp8 && (is_te || vae::is_vae(&header)) {
            return Err(RuntimeError::Input(format!(
                "{}: dtype \"fp8\" keeps a Wan DiT's fp8 weights resident; for text \
                 encoders and VAEs use \"bf16\", \"f16\" or \"f32\"",
                path.display()
            )));
        }
        if is_te {
            return self.load_text_encoder(path, header, opts, at);
        }
        if vae::is_vae(&header) {
            return self.load_vae(path, header, opts, at);
        }
        let detected = detect(&header, opts.heads)?;
        if fp8
            && !detected
                .tensors
                .values()
                .any(|e| e.dtype == safetensors::Dtype::F8_E4M3)
        {
            return Err(RuntimeError::Input(format!(
                "{}: dtype \"fp8\" keeps fp8 weights as they are, but this file has \
                 none ({}); load an fp8 / fp8_scaled file, or use \"bf16\"",
                path.display(),
                detected.dtype
            )));
        }
        if !detected.unmapped.is_empty() {
            tracing::warn!(
                "{}: {} tensors have no place in the model and are ignored: {:?}",
                path.display(),
                detected.unmapped.len(),
                detected.unmapped
            );
        }
        if detected.clip_image {
            return Err(RuntimeError::Input(format!(
                "{}: a Wan 2.1 image-to-video model ({}): its CLIP image context \
                 (img_emb, k_img/v_img) is not supported; Wan 2.2 I2V-A14B experts \
                 (in_dim 36, no img_emb) load",
                path.display(),
                detected.variant
            )));
        }
        let name = opts.name.clone().unwrap_or_else(|| default_name(&path));
        let DitPlan {
            dtype,
            total,
            block_bytes,
            plan,
        } = self.plan_dit(&name, &detected, opts.dtype, opts.offload, opts.prefetch)?;
        let cfg = detected.cfg.clone();
        let transient = read_transient(detected.tensors.values(), dtype);

        let rss_before = memstat::rss();
        let weights = if self.dry {
            Weights::Planned(dry::Planned::Dit(cfg.clone()))
        } else {
            let source = CheckpointSource::open(&header, detected.tensors.clone())?;
            let model = WanResident::load(
                &cfg,
                source,
                dtype,
                &self.device,
                plan.resident_blocks,
                block_bytes.clone(),
                plan.prefetch,
            )
            .map_err(|e| RuntimeError::Model(plain_error(&e)))?;
            Weights::Dit(Box::new(model))
        };
        let info = ModelInfo {
            arch: detected.arch,
            variant: detected.variant.clone(),
            layout: detected.layout.name(),
            dtype,
            params: detected.param_count(),
            blocks: cfg.num_layers,
        };
        if !detected.unmapped.is_empty() {
            tracing::debug!("{} unmapped keys ignored", detected.unmapped.len());
        }
        let how = if plan.offloaded == 0 {
            String::new()
        } else {
            format!(
                " ({}/{} blocks + {} stream buffer{})",
                plan.resident_blocks,
                cfg.num_layers,
                mib(plan.stream_buffer),
                if plan.prefetch {
                    "s, read one block ahead"
                } else {
                    ""
                }
            )
        };
        tracing::debug!(
            "rss {} -> {} after reading {name}",
            mib(rss_before),
            mib(memstat::rss())
        );
        Ok(self.admit_loaded(
            LoadedModel {
                id: 0,
                name,
                path,
                info,
                bytes: total,
                loaded_at: at.to_string(),
                on_device: true,
                weights,
            },
            &plan,
            &how,
            transient,
        ))
    }

    /// Where a Wan DiT's bytes would go if it were loaded now, in `dtype`
    /// (default: the file's own): what `load_model` does and `baton inspect
    /// --vram` shows, from the header alone.
    pub fn plan_dit(
        &self,
        name: &str,
        detected: &Detected,
        dtype: Option<DType>,
        policy: OffloadPolicy,
        prefetch: bool,
    ) -> Result<DitPlan> {
        let dtype = match dtype {
            Some(d) => d,
            None if detected.dtype == "fp8_e4m3" => self.fp8_choice(name, detected),
            None => dominant_dtype(detected),
        };
        let (total, block_bytes) = dit_bytes(detected, dtype, &self.device);
        let stem_bytes = total - block_bytes.iter().sum::<u64>();
        let plan = self.plan_residency(name, total, stem_bytes, &block_bytes, policy, prefetch)?;
        Ok(DitPlan {
            dtype,
            total,
            block_bytes,
            plan,
        })
    }

    /// How an fp8 checkpoint loaded without a `dtype` is held: dequantised
    /// once to bf16 when that fits the free budget whole (the faster
    /// forward), else kept as fp8 on the device and dequantised per layer at
    /// forward time, which nearly halves what has to be resident or streamed
    /// (unless the file's unquantised tensors, held in the compute dtype,
    /// make fp8 the larger: then bf16 and streaming).
    fn fp8_choice(&self, name: &str, detected: &Detected) -> DType {
        let (bf16, _) = dit_bytes(detected, DType::BF16, &self.device);
        let (fp8, _) = dit_bytes(detected, DType::F8E4M3, &self.device);
        let free = self.ledger.free();
        if bf16 <= free || fp8 >= bf16 {
            tracing::info!(
                "{name}: fp8 weights dequantised to bf16 at load ({} {} the {} free)",
                mib(bf16),
                if bf16 <= free {
                    "fits"
                } else {
                    "is no larger than fp8 held here; streams in"
                },
                mib(free)
            );
            DType::BF16
        } else {
            tracing::info!(
                "{name}: fp8 weights kept as fp8 on the device ({}), dequantised per layer \
                 at forward time: bf16 would need {} of the {} free",
                mib(fp8),
                mib(bf16),
                mib(free)
            );
            DType::F8E4M3
        }
    }

    /// Enters a freshly read model in the ledger and the registry, and logs
    /// where its bytes went: the one place a load becomes visible.
    /// `transient` is what reading holds beyond the weights (see
    /// [`read_transient`]), for the timeline.
    fn admit_loaded(
        &mut self,
        mut m: LoadedModel,
        plan: &Plan,
        detail: &str,
        transient: u64,
    ) -> ModelId {
        let id = self.registry.next_id();
        m.id = id;
        let weights = m.bytes - plan.offloaded;
        let pinned = m.dit().map(WanResident::pinned_bytes).unwrap_or(0);
        self.ledger.admit(
            id,
            Entry {
                name: m.name.clone(),
                weights,
                stream_buffer: plan.stream_buffer,
                offloaded: plan.offloaded,
                host: 0,
                lora: 0,
                pinned,
            },
        );
        self.offload_peak = self.offload_peak.max(self.ledger.offloaded());
        let (partially, how) = if plan.offloaded == 0 {
            ("", format!("{} resident, 0 MiB offloaded", mib(weights)))
        } else {
            (
                " partially",
                format!(
                    "{} resident{detail}, {} offloaded{}",
                    mib(weights + plan.stream_buffer),
                    mib(plan.offloaded),
                    if pinned > 0 {
                        format!(" (held in {} of pinned host memory)", mib(pinned))
                    } else {
                        String::new()
                    }
                ),
            )
        };
        let i = &m.info;
        tracing::info!(
            "loaded {}{partially} ({} {}, {} layout, {} params, {}): {how}",
            m.name,
            i.arch,
            i.variant,
            i.layout,
            count_label(i.params),
            dtype_label(i.dtype),
        );
        let name = m.name.clone();
        let at = m.loaded_at.clone();
        self.registry.insert(m);
        self.record(&at, "load", &name, transient, how);
        id
    }

    /// Loads a umT5 text encoder whole (it is used once per prompt, so it is
    /// not block-streamed): it must fit the free budget.
    fn load_text_encoder(
        &mut self,
        path: PathBuf,
        header: Header,
        opts: &LoadOptions,
        at: &str,
    ) -> Result<ModelId> {
        let planned = text_encoder::plan(&header, opts.dtype)?;
        let name = opts.name.clone().unwrap_or_else(|| default_name(&path));
        let total: u64 = planned
            .tensors
            .values()
            .map(|e| (e.numel() * planned.info.dtype.size_in_bytes()) as u64)
            .sum();
        self.check_fits(&name, total)?;
        let info = planned.info.clone();
        let transient = read_transient(planned.tensors.values(), info.dtype);
        let tokenizer = match &opts.tokenizer {
            Some(t) => Some(self.resolve_model_path(&t.to_string_lossy())?),
            None => None,
        };
        if self.dry {
            let weights = Weights::Planned(dry::Planned::Text(planned.cfg.clone()));
            return Ok(self.admit_whole(name, path, info, (total, transient), weights, at));
        }
        let te = text_encoder::load(&header, planned, tokenizer.as_deref(), &self.device)
            .map_err(RuntimeError::Model)?;
        tracing::info!("{name}: tokenizer from {}", te.tokenizer_from);
        let weights = Weights::Text(Box::new(te));
        Ok(self.admit_whole(name, path, info, (total, transient), weights, at))
    }

    /// Loads a Wan VAE whole; it must fit the free budget.
    fn load_vae(
        &mut self,
        path: PathBuf,
        header: Header,
        opts: &LoadOptions,
        at: &str,
    ) -> Result<ModelId> {
        let planned = vae::plan(&header, opts.dtype, &self.device)?;
        let name = opts.name.clone().unwrap_or_else(|| default_name(&path));
        let total = planned.info.params * planned.info.dtype.size_in_bytes() as u64;
        let transient = read_transient(planned.tensors.values(), planned.info.dtype);
        self.check_fits(&name, total)?;
        let weights = if self.dry {
            Weights::Planned(dry::Planned::Vae(planned.cfg.clone()))
        } else {
            let model = vae::load(&header, &planned, &self.device).map_err(RuntimeError::Model)?;
            Weights::Vae(Box::new(model))
        };
        Ok(self.admit_whole(name, path, planned.info, (total, transient), weights, at))
    }

    /// Admits a model that is loaded whole (nothing offloaded or streamed);
    /// `bytes` is (resident, file bytes mapped while reading).
    fn admit_whole(
        &mut self,
        name: String,
        path: PathBuf,
        info: ModelInfo,
        (bytes, transient): (u64, u64),
        weights: Weights,
        at: &str,
    ) -> ModelId {
        let plan = Plan {
            resident_blocks: info.blocks,
            offloaded: 0,
            stream_buffer: 0,
            prefetch: false,
        };
        self.admit_loaded(
            LoadedModel {
                id: 0,
                name,
                path,
                info,
                bytes,
                loaded_at: at.to_string(),
                on_device: true,
                weights,
            },
            &plan,
            "",
            transient,
        )
    }

    /// A model that is not streamed must fit whole.
    fn check_fits(&self, name: &str, total: u64) -> Result<()> {
        let free = self.ledger.free();
        if total <= free {
            return Ok(());
        }
        Err(RuntimeError::Budget(format!(
            "'{name}' needs {} but only {} of the {} budget is free ({}); \
             delete_model one of them first",
            mib(total),
            mib(free),
            mib(self.ledger.budget()),
            self.loaded_summary()
        )))
    }

    fn plan_residency(
        &self,
        name: &str,
        total: u64,
        stem_bytes: u64,
        block_bytes: &[u64],
        policy: OffloadPolicy,
        prefetch: bool,
    ) -> Result<Plan> {
        let free = self.ledger.free();
        if total <= free {
            return Ok(Plan {
                resident_blocks: block_bytes.len(),
                offloaded: 0,
                stream_buffer: 0,
                prefetch: false,
            });
        }
        let loaded = self.loaded_summary();
        if policy == OffloadPolicy::Never {
            return Err(RuntimeError::Budget(format!(
                "'{name}' needs {} but only {} of the {} budget is free ({}); \
                 delete_model one of them first, or allow offload: \"auto\"",
                mib(total),
                mib(free),
                mib(self.ledger.budget()),
                loaded
            )));
        }
        let block = block_bytes.iter().copied().max().unwrap_or(0);
        let n = block_bytes.len();
        // The most resident blocks that fit beside the stream buffers they
        // leave (two when reads are double-buffered); without room for the
        // second buffer, stream through one and do not read ahead.
        let fits = |prefetch: bool| {
            (0..=n).rev().find_map(|r| {
                let buffers = super::residency::stream_buffers(n - r, prefetch) * block;
                let used = stem_bytes + block_bytes[..r].iter().sum::<u64>() + buffers;
                (used <= free).then_some((r, buffers))
            })
        };
        let chosen = if prefetch {
            fits(true).map(|f| (f, true))
        } else {
            None
        };
        let Some(((resident_blocks, stream_buffer), prefetch)) =
            chosen.or_else(|| fits(false).map(|f| (f, false)))
        else {
            return Err(RuntimeError::Budget(format!(
                "'{name}' cannot run even with every block offloaded: it needs {} \
                 (non-block weights + one block buffer) but only {} is free ({})",
                mib(stem_bytes + block),
                mib(free),
                loaded
            )));
        };
        Ok(Plan {
            resident_blocks,
            offloaded: block_bytes[resident_blocks..].iter().sum(),
            stream_buffer,
            prefetch,
        })
    }

    fn loaded_summary(&self) -> String {
        let models: Vec<String> = self
            .ledger
            .entries()
            .map(|(_, e)| format!("{}: {}", e.name, mib(e.resident())))
            .collect();
        if models.is_empty() {
            "nothing loaded".into()
        } else {
            format!("loaded: {}", models.join(", "))
        }
    }

    /// Drops every reference to the model's weights, device and host.
    pub fn delete_model(&mut self, id: ModelId, at: &str) -> Result<()> {
        let m = self
            .registry
            .remove(id, at)
            .ok_or_else(|| RuntimeError::Model(self.registry.get(id).err().unwrap_or_default()))?;
        let entry = self.ledger.release(id).unwrap_or_default();
        let name = m.name.clone();
        drop(m);
        memstat::trim();
        let freed = format!(
            "freed {} device, {} host",
            mib(entry.resident()),
            mib(entry.host)
        );
        tracing::info!("deleted {name}: {freed}");
        self.record(at, "delete", &name, 0, freed);
        Ok(())
    }

    /// ComfyUI-style unload: frees the device bytes but keeps the weights in
    /// host memory, so RAM is not freed. The next use brings it back.
    pub fn offload_model(&mut self, id: ModelId, at: &str) -> Result<()> {
        let m = self.registry.get_mut(id).map_err(RuntimeError::Model)?;
        if !m.on_device {
            return Ok(());
        }
        // On the CPU device and host memory are one; on a card the weights
        // really move (see `WanResident::relocate`).
        if !self.device.is_cpu() {
            match &mut m.weights {
                Weights::Dit(d) => d
                    .relocate(&Device::Cpu)
                    .map_err(|e| RuntimeError::Model(plain_error(&e)))?,
                Weights::Planned(_) => {}
                _ => {
                    return Err(RuntimeError::Input(format!(
                        "offload_model('{}'): on a card only diffusion models move to host \
                         memory; delete_model frees a text encoder or a VAE",
                        m.name
                    )))
                }
            }
        }
        m.on_device = false;
        let entry = self.ledger.get(id).cloned().unwrap_or_default();
        let host = entry.weights;
        self.ledger.admit(
            id,
            Entry {
                weights: 0,
                stream_buffer: 0,
                host,
                pinned: 0,
                ..entry
            },
        );
        let name = self
            .registry
            .get(id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let note = format!(
            "{} device freed, {} still held in RAM",
            mib(host),
            mib(host)
        );
        tracing::info!("offloaded {name} to host: {note}");
        self.record(at, "offload", &name, 0, note);
        Ok(())
    }

    /// The model, back on the device if it was offloaded (and counted so),
    /// for a primitive about to compute with it at script position `at`.
    pub fn use_model(&mut self, id: ModelId, at: &str) -> Result<&LoadedModel> {
        self.ensure_on_device(id, at)?;
        self.model(id)
    }

    /// Brings an offloaded model back onto the device before use.
    fn ensure_on_device(&mut self, id: ModelId, at: &str) -> Result<()> {
        let m = self.registry.get(id).map_err(RuntimeError::Model)?;
        if m.on_device {
            return Ok(());
        }
        let entry = self.ledger.get(id).cloned().unwrap_or_default();
        let free = self.ledger.free();
        // The stream buffers were given up with the device bytes.
        let stream_buffer = m.dit().map(WanResident::stream_buffer_bytes).unwrap_or(0);
        let needed = entry.host + stream_buffer;
        if needed > free {
            return Err(RuntimeError::Budget(format!(
                "'{}' was offloaded and needs {} back on the device, but only {} is free ({})",
                m.name,
                mib(needed),
                mib(free),
                self.loaded_summary()
            )));
        }
        let m = self.registry.get_mut(id).map_err(RuntimeError::Model)?;
        let mut pinned = 0;
        if !self.device.is_cpu() {
            if let Weights::Dit(d) = &mut m.weights {
                d.relocate(&self.device)
                    .map_err(|e| RuntimeError::Model(plain_error(&e)))?;
                pinned = d.pinned_bytes();
            }
        }
        self.ledger.admit(
            id,
            Entry {
                weights: entry.host,
                host: 0,
                pinned,
                stream_buffer,
                ..entry
            },
        );
        let m = self.registry.get_mut(id).map_err(RuntimeError::Model)?;
        m.on_device = true;
        let name = m.name.clone();
        self.record(at, "reload", &name, 0, mib(entry.host));
        Ok(())
    }

    /// One raw forward: the model's velocity prediction (f32).
    pub fn predict(
        &mut self,
        id: ModelId,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor> {
        self.predict_at(id, x, t, context, "")
    }

    /// `predict`, recorded on the timeline at script position `at`.
    pub fn predict_at(
        &mut self,
        id: ModelId,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        at: &str,
    ) -> Result<Tensor> {
        self.ensure_on_device(id, at)?;
        let m = self.model(id)?;
        let cfg = self.dit_config(m)?;
        check_inputs(&m.name, cfg, x, context)?;
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

    /// A DiT's config, from its weights or from its plan.
    fn dit_config<'a>(&self, m: &'a LoadedModel) -> Result<&'a crate::models::wan::WanConfig> {
        match m.planned() {
            Some(dry::Planned::Dit(cfg)) => Ok(cfg),
            Some(_) => Err(RuntimeError::Input(m.not_a("a Wan diffusion model (DiT)"))),
            None => Ok(&m.dit().map_err(RuntimeError::Input)?.cfg),
        }
    }

    /// Runs a KSamplerAdvanced-style pass and returns the new latent.
    pub fn sample(
        &mut self,
        id: ModelId,
        latent: &Tensor,
        o: &SampleOptions,
        on_step: &mut dyn FnMut(usize, usize, f32),
        at: &str,
    ) -> Result<Tensor> {
        self.ensure_on_device(id, at)?;
        if samplers::find(&o.sampler).is_none() {
            return Err(RuntimeError::Input(format!(
                "unknown sampler '{}' (available: {})",
                o.sampler,
                crate::sampling::sampler_names().join(", ")
            )));
        }
        let full = full_sigmas(o)?;
        let m = self.model(id)?;
        let cfg = self.dit_config(m)?;
        check_inputs(&m.name, cfg, latent, &o.positive)?;
        if let Some(neg) = &o.negative {
            check_inputs(&m.name, cfg, latent, neg)?;
        }
        let needs_uncond = guidance::needs_uncond(o.cfg);
        if needs_uncond && o.negative.is_none() {
            return Err(RuntimeError::Input(format!(
                "cfg {} needs a negative context: pass negative: <tensor>, or cfg: 1.0",
                o.cfg
            )));
        }
        let Some(cut) = ksampler::cut(&full, o.start, o.end, o.leftover_noise) else {
            tracing::info!(
                "sample {}: steps {}..{} is empty, latent returned unchanged",
                m.name,
                o.start,
                o.end.map_or("end".into(), |e| e.to_string())
            );
            return Ok(latent.clone());
        };
        check_sigmas(&cut)?;
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
                (cut.len() - 1) * if needs_uncond { 2 } else { 1 }
            );
            let out = latent.to_dtype(DType::F32).map_err(tensor_err("latent"))?;
            self.record(at, "sample", &name, act, note);
            return Ok(out);
        }
        let model = m.dit().map_err(RuntimeError::Input)?;
        let mut local = SolverState::default();
        let mut shared = o.state.as_ref().map(|s| s.borrow_mut());
        let state: &mut SolverState = match shared.as_deref_mut() {
            Some(s) => s,
            None => &mut local,
        };
        check_continuation(state, o, &cut)?;
        let started = std::time::Instant::now();
        // Scripts hold host tensors; the pass runs where the model is.
        let dev = self.device.clone();
        let on_device = |t: &Tensor, what: &str| t.to_device(&dev).map_err(tensor_err(what));
        let latent = on_device(
            &latent.to_dtype(DType::F32).map_err(tensor_err("latent"))?,
            "latent",
        )?;
        let positive = on_device(&o.positive, "positive context")?;
        let negative = o
            .negative
            .as_ref()
            .map(|n| on_device(n, "negative context"))
            .transpose()?;
        let x = initial_x(state, o, &latent, cut[0])?;
        let model_t = model_timesteps(o, &full);
        let mut calls = 0usize;
        let steps = cut.len() - 1;
        // Steps finished in this pass, for the cancel and NaN messages.
        let done = std::cell::Cell::new(0usize);
        let mut denoise = |x: &Tensor, sigma: f32| -> candle_core::Result<Tensor> {
            let step = done.get();
            cancel::check_candle(|| format!("before step {} of {steps}", step + 1))?;
            if step > 0 && !all_finite(x)? {
                candle_core::bail!(
                    "the latent holds NaN or Inf after step {step} of {steps} (sigma {sigma}); stopping"
                );
            }
            let t = Tensor::new(&[model_t(sigma)], &dev)?;
            let d = |ctx: &Tensor| -> candle_core::Result<Tensor> {
                let v = model.forward(x, &t, ctx)?;
                if !all_finite(&v)? {
                    candle_core::bail!(
                        "the model returned NaN or Inf at step {} of {steps} (sigma {sigma}); \
                         check its weights (load_model(..., #{{ check_weights: true }}))",
                        step + 1
                    );
                }
                x - (v * sigma as f64)?
            };
            let cond = d(&positive)?;
            calls += 1;
            if !needs_uncond {
                return Ok(cond);
            }
            let uncond = d(negative.as_ref().expect("checked above"))?;
            calls += 1;
            guidance::cfg_combine(&cond, &uncond, o.cfg)
        };
        // Streamed bytes per step, with the rate the forwards sustained.
        let streamed_total = std::cell::Cell::new(0u64);
        let step_started = std::cell::Cell::new(std::time::Instant::now());
        let mut on_step = |i: usize, n: usize, sigma: f32| {
            done.set(i + 1);
            let bytes = model.take_streamed();
            if bytes > 0 {
                let secs = step_started.get().elapsed().as_secs_f64();
                tracing::info!(
                    "step {}/{n}: streamed {:.2} GB in {secs:.2}s ({:.1} GB/s effective)",
                    i + 1,
                    bytes as f64 / 1e9,
                    bytes as f64 / secs.max(1e-9) / 1e9
                );
                streamed_total.set(streamed_total.get() + bytes);
            }
            step_started.set(std::time::Instant::now());
            on_step(i, n, sigma)
        };
        // ComfyUI's default noise sampler: a generator seeded like the initial noise.
        let mut gen = noise::TorchGenerator::new(o.seed);
        let mut draw = |x: &Tensor, _: f32, _: f32| -> candle_core::Result<Tensor> {
            Tensor::from_vec(gen.randn(x.elem_count()), x.shape(), x.device())
        };
        let mut hooks = samplers::Hooks {
            denoise: &mut denoise,
            noise: &mut draw,
            on_step: &mut on_step,
            shift: o.shift,
        };
        state.total_steps = Some(full.len() - 1);
        let x = samplers::run(&o.sampler, &mut hooks, x, &cut, state)
            .map_err(tensor_err(format!("sampling with '{}'", m.name)))?;
        let last = *cut.last().expect("cut is non-empty");
        if !all_finite(&x).map_err(tensor_err("the final latent"))? {
            return Err(RuntimeError::Input(format!(
                "sampling with '{}': the latent holds NaN or Inf after the last step \
                 ({steps} of {steps}, sigma {last}); stopping",
                m.name
            )));
        }
        // out = x / (1 − σ_last): ComfyUI's inverse noise scaling (identity when σ_last = 0).
        let out =
            samplers::div_scalar(&x, 1.0 - last).map_err(tensor_err("inverse noise scaling"))?;
        state.sigma = Some(last);
        state.handoff = Some((out.clone(), x));
        let out = out
            .to_device(&Device::Cpu)
            .map_err(tensor_err("the final latent"))?;
        let streamed = streamed_total.get() + model.take_streamed();
        let report = SampleReport {
            steps_run: cut.len() - 1,
            model_calls: calls,
            streamed_bytes: streamed,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            "sampled {} steps with {} ({}, {} model calls, {:.2}s, {} streamed)",
            report.steps_run,
            m.name,
            o.sampler,
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
        self.last_sample = report;
        self.record(at, "sample", &name, act, note);
        Ok(out)
    }
}

/// Warns (and carries on) when weights hold NaN or Inf: some checkpoints
/// carry unused non-finite buffers, so this is not fatal; the sampler's
/// per-step check stops a run they would spoil.
fn warn_non_finite(header: &Header) -> Result<()> {
    let bad = crate::checkpoint::finite::non_finite_tensors(header)?;
    if !bad.is_empty() {
        let total: usize = bad.iter().map(|(_, n)| n).sum();
        let names: Vec<String> = bad
            .iter()
            .take(8)
            .map(|(k, n)| format!("{k} ({n})"))
            .collect();
        tracing::warn!(
            "{}: {total} NaN/Inf weights in {} tensors: {}{}",
            header.path.display(),
            bad.len(),
            names.join(", "),
            if bad.len() > 8 { ", ..." } else { "" }
        );
    }
    Ok(())
}

/// Whether every value of `t` is finite, from one sum: a NaN or Inf
/// anywhere makes the sum non-finite, and one reduction per step is cheap
/// next to a forward.
fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    let s = t.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok(s.is_finite())
}

/// The whole sigma list for `o` (steps + 1 values), before the start/end cut.
fn full_sigmas(o: &SampleOptions) -> Result<Vec<f32>> {
    match &o.sigmas {
        Some(s) if s.len() < 2 => Err(RuntimeError::Input(
            "sigmas needs at least two values (the last is usually 0)".into(),
        )),
        Some(s) => Ok(s.clone()),
        None => sigmas::for_sampler(&o.scheduler, o.steps, o.shift, &o.sampler)
            .map_err(RuntimeError::Input),
    }
}

/// The timestep the model sees for each sigma. Wan is trained on `σ·1000`;
/// diffusers' UniPC (sampler `unipc_flow`) feeds integers instead, truncated
/// from its float64 sigmas, so for its own schedules the exact list is used
/// (the f32 sigma alone can land on the other side of an integer).
fn model_timesteps(o: &SampleOptions, full: &[f32]) -> impl Fn(f32) -> f32 {
    let integer = o.sampler == "unipc_flow";
    let exact: Vec<(f32, f32)> = match (&o.sigmas, integer) {
        (None, true) => sigmas::integer_timesteps(&o.scheduler, o.steps, o.shift)
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
fn check_continuation(state: &SolverState, o: &SampleOptions, cut: &[f32]) -> Result<()> {
    if state.is_fresh() {
        return Ok(());
    }
    if state.sampler != o.sampler {
        return Err(RuntimeError::Input(format!(
            "the sampler state was written by '{}'; continue it with the same sampler, not '{}'",
            state.sampler, o.sampler
        )));
    }
    if o.add_noise {
        return Err(RuntimeError::Input(
            "continuing a sampler state needs add_noise: false (the latent already carries its noise)"
                .into(),
        ));
    }
    if let Some(stop) = state.sigma {
        if stop.to_bits() != cut[0].to_bits() {
            return Err(RuntimeError::Input(format!(
                "the sampler state stopped at sigma {stop}, but this pass starts at sigma {}",
                cut[0]
            )));
        }
    }
    Ok(())
}

/// `x = σ0·noise + (1−σ0)·latent`, ComfyUI's CONST noise scaling. When the
/// latent is exactly the output of the pass that wrote `state`, the solver's
/// own x is reused, so a split run equals the single run bit for bit.
fn initial_x(state: &SolverState, o: &SampleOptions, latent: &Tensor, s0: f32) -> Result<Tensor> {
    if let (false, Some((out, x))) = (o.add_noise, &state.handoff) {
        if out.dims() == latent.dims() && same_values(out, latent) {
            return Ok(x.clone());
        }
    }
    let noise = if o.add_noise {
        match &o.noise {
            Some(n) => {
                if n.dims() != latent.dims() {
                    return Err(RuntimeError::Input(format!(
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
                let v = noise::torch_randn(o.seed, latent.elem_count());
                Tensor::from_vec(v, latent.shape(), latent.device()).map_err(tensor_err("noise"))?
            }
        }
    } else {
        latent.zeros_like().map_err(tensor_err("noise"))?
    };
    ((&noise * s0 as f64).and_then(|a| a + (latent * (1.0 - s0) as f64)?))
        .map_err(tensor_err("noise scaling"))
}

fn same_values(a: &Tensor, b: &Tensor) -> bool {
    a.ne(b)
        .and_then(|m| m.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>())
        .map(|n| n == 0.0)
        .unwrap_or(false)
}

/// How a model will sit under the budget: the first `resident_blocks` on the
/// device, the rest streamed through a `stream_buffer` of one block.
/// How a model's blocks are split between resident and streamed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub resident_blocks: usize,
    /// Bytes left in the file and streamed at each forward.
    pub offloaded: u64,
    /// The block-sized buffers streamed blocks pass through (one, or two
    /// when the next block is read ahead).
    pub stream_buffer: u64,
    /// Streamed blocks are read one ahead (two buffers).
    pub prefetch: bool,
}

/// [`Runtime::plan_dit`]'s answer.
#[derive(Debug, Clone)]
pub struct DitPlan {
    /// The resident dtype.
    pub dtype: DType,
    /// Bytes of all weights in that dtype.
    pub total: u64,
    pub block_bytes: Vec<u64>,
    pub plan: Plan,
}

/// File bytes of the tensors under `prefix`.
/// Memory a load holds beyond the weights it keeps: each tensor is read
/// into a buffer of its own (no file pages are mapped), and one that needs
/// converting is held in both dtypes until the conversion is done.
fn read_transient<'a>(entries: impl Iterator<Item = &'a TensorEntry>, resident: DType) -> u64 {
    entries
        .filter(|e| {
            let same = matches!(
                (e.dtype, resident),
                (safetensors::Dtype::F32, DType::F32)
                    | (safetensors::Dtype::F16, DType::F16)
                    | (safetensors::Dtype::BF16, DType::BF16)
                    | (safetensors::Dtype::F8_E4M3, DType::F8E4M3)
            );
            !same
        })
        .map(|e| e.bytes() as u64)
        .max()
        .unwrap_or(0)
}

fn check_inputs(
    name: &str,
    cfg: &crate::models::wan::WanConfig,
    x: &Tensor,
    context: &Tensor,
) -> Result<()> {
    let d = x.dims();
    if d.len() != 5 || d[1] != cfg.in_dim {
        return Err(RuntimeError::Input(format!(
            "'{}' expects a latent [B, {}, F, H, W], got {:?}",
            name, cfg.in_dim, d
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

/// Sigmas a pass can run on: finite, within [0, 1], and not ending at 1
/// (the output is divided by 1 − σ_last).
fn check_sigmas(s: &[f32]) -> Result<()> {
    if let Some(bad) = s
        .iter()
        .find(|v| !(v.is_finite() && (0.0..=1.0).contains(*v)))
    {
        return Err(RuntimeError::Input(format!(
            "sigmas must lie in [0, 1] for a flow model, got {bad} in {s:?}"
        )));
    }
    if s.last().is_some_and(|&l| l >= 1.0) {
        return Err(RuntimeError::Input(format!(
            "the last sigma must be below 1 (usually 0), got {s:?}"
        )));
    }
    Ok(())
}

/// A DiT's bytes held in `dtype` on `device`, in all and per block. fp8
/// resident keeps fp8 weights at 1 byte; the rest (norms, biases, scales,
/// unquantised layers) is held in the compute dtype.
fn dit_bytes(detected: &Detected, dtype: DType, device: &Device) -> (u64, Vec<u64>) {
    let compute = crate::models::wan::dit::compute_dtype(dtype, device);
    let held = |e: &TensorEntry| -> u64 {
        let per = if dtype == DType::F8E4M3 && e.dtype != safetensors::Dtype::F8_E4M3 {
            compute.size_in_bytes()
        } else {
            dtype.size_in_bytes()
        };
        (e.numel() * per) as u64
    };
    let bytes_in = |prefix: &str| -> u64 {
        detected
            .tensors
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| held(e))
            .sum()
    };
    let blocks = (0..detected.cfg.num_layers)
        .map(|i| bytes_in(&format!("blocks.{i}.")))
        .collect();
    (bytes_in(""), blocks)
}

fn dominant_dtype(d: &Detected) -> DType {
    match d.dtype.as_str() {
        "f16" => DType::F16,
        // fp8 weights are dequantised once at load; bf16 keeps them at 2 bytes.
        "bf16" | "fp8_e4m3" => DType::BF16,
        _ => DType::F32,
    }
}

/// The float dtype holding most bytes among `entries` (f32 when none is half).
pub fn dominant_dtype_of<'a>(entries: impl Iterator<Item = &'a TensorEntry>) -> DType {
    let mut bytes = [0u64; 3]; // f32, f16, bf16
    for e in entries {
        match e.dtype {
            safetensors::Dtype::F16 => bytes[1] += e.bytes() as u64,
            safetensors::Dtype::BF16 => bytes[2] += e.bytes() as u64,
            // An fp8 file is dequantised once at load and held in bf16 (2
            // bytes a weight), even where its f32 norms outweigh the linears.
            safetensors::Dtype::F8_E4M3 => return DType::BF16,
            _ => bytes[0] += e.bytes() as u64,
        }
    }
    let i = (0..3).max_by_key(|&i| bytes[i]).unwrap_or(0);
    [DType::F32, DType::F16, DType::BF16][i]
}

pub fn dtype_label(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F8E4M3 => "fp8",
        _ => "other",
    }
}

fn default_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}
