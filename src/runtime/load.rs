//! Reading a model in: `load_model` for every architecture, `prefetch_model`,
//! and the one place a load becomes visible (ledger, registry, timeline,
//! journal). Where the bytes go is decided by `placement`, before any is read.

use super::error::{plain_error, Result, RuntimeError};
use super::journal::LoadRecord;
use super::ledger::Admission;
use super::options::LoadOptions;
use super::placement::{self, Plan, Room};
use super::registry::{LoadedModel, ModelId, ModelInfo, Weights};
use super::residency::WanResident;
use super::runtime::Runtime;
use super::size::{count_label, mib};
use super::{dry, memstat, text_encoder, vae};
use crate::checkpoint::{detect, CheckpointError, CheckpointSource, Header};
use candle_core::DType;
use std::path::{Path, PathBuf};

/// What `admit` enters: the model, where its bytes went, and what reading
/// it held beyond them.
struct Loaded {
    name: String,
    path: PathBuf,
    info: ModelInfo,
    weights: Weights,
    /// Bytes of all weights in the resident dtype.
    total: u64,
    plan: Plan,
    /// How the resident part is made up, for the log line ("" when whole).
    detail: String,
    /// What reading held beyond the weights (see `placement::read_transient`).
    transient: u64,
}

impl Runtime {
    /// The free budget and what holds the rest, for the planner.
    fn room<'a>(&self, loaded: &'a str) -> Room<'a> {
        Room {
            free: self.ledger.free(),
            budget: self.ledger.budget(),
            loaded,
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

    /// Loads a checkpoint (Wan DiT, umT5 text encoder or Wan VAE, told
    /// apart by its keys) under the budget. `at` names the script position
    /// for messages. Nothing changes in the session if it fails.
    pub fn load_model(&mut self, path: &str, opts: &LoadOptions, at: &str) -> Result<ModelId> {
        let requested = opts.requested.clone().unwrap_or_else(|| path.to_string());
        let path = self.resolve_model_path(path)?;
        self.finish_prefetch(&path);
        let header = Header::read(&path)?;
        crate::checkpoint::gguf::check_architecture(&header)?;
        if opts.check_weights {
            warn_non_finite(&header)?;
        }
        let fp8 = opts.dtype == Some(DType::F8E4M3);
        let is_te = text_encoder::is_text_encoder(&header);
        let is_vae = vae::is_vae(&header);
        if fp8 && (is_te || is_vae) {
            return Err(RuntimeError::Input(format!(
                "{}: dtype \"fp8\" keeps a Wan DiT's fp8 weights resident; for text \
                 encoders and VAEs use \"bf16\", \"f16\" or \"f32\"",
                path.display()
            )));
        }
        let loaded = if is_te {
            self.read_text_encoder(path, header, opts)?
        } else if is_vae {
            self.read_vae(path, header, opts)?
        } else {
            self.read_dit(path, header, opts)?
        };
        let id = self.admit(loaded, at);
        let m = self.model(id)?;
        let record = LoadRecord {
            name: m.name.clone(),
            requested,
            path: m.path.clone(),
            arch: format!("{} {}", m.info.arch, m.info.variant),
        };
        self.journal.loads.push(record);
        Ok(id)
    }

    /// A Wan DiT: planned against the free budget, then read with its
    /// first blocks resident and the rest streamed.
    fn read_dit(&mut self, path: PathBuf, header: Header, opts: &LoadOptions) -> Result<Loaded> {
        let detected = detect(&header, opts.heads)?;
        if opts.dtype == Some(DType::F8E4M3)
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
        let summary = self.ledger.summary();
        let p = placement::plan_dit(
            &name,
            &detected,
            opts.dtype,
            opts.offload,
            opts.prefetch,
            &self.device,
            self.room(&summary),
        )?;
        let cfg = detected.cfg.clone();
        let transient = placement::read_transient(detected.tensors.values(), p.dtype);
        let rss_before = memstat::rss();
        let weights = if self.dry {
            Weights::Planned(dry::Planned::Dit(cfg.clone()))
        } else {
            let source = CheckpointSource::open(&header, detected.tensors.clone())?;
            let model = WanResident::load(
                &cfg,
                source,
                p.dtype,
                &self.device,
                p.plan.resident_blocks,
                p.block_bytes.clone(),
                p.plan.prefetch,
            )
            .map_err(|e| RuntimeError::Model(plain_error(&e)))?;
            Weights::Dit(Box::new(model))
        };
        tracing::debug!(
            "rss {} -> {} after reading {name}",
            mib(rss_before),
            mib(memstat::rss())
        );
        let detail = if p.plan.offloaded == 0 {
            String::new()
        } else {
            format!(
                " ({}/{} blocks + {} stream buffer{})",
                p.plan.resident_blocks,
                cfg.num_layers,
                mib(p.plan.stream_buffer),
                if p.plan.prefetch {
                    "s, read one block ahead"
                } else {
                    ""
                }
            )
        };
        Ok(Loaded {
            name,
            path,
            info: ModelInfo {
                arch: detected.arch,
                variant: detected.variant.clone(),
                layout: detected.layout.name(),
                dtype: p.dtype,
                params: detected.param_count(),
                blocks: cfg.num_layers,
            },
            weights,
            total: p.total,
            plan: p.plan,
            detail,
            transient,
        })
    }

    /// A umT5 text encoder, read whole (it is used once per prompt, so it
    /// is not block-streamed): it must fit the free budget.
    fn read_text_encoder(
        &mut self,
        path: PathBuf,
        header: Header,
        opts: &LoadOptions,
    ) -> Result<Loaded> {
        let planned = text_encoder::plan(&header, opts.dtype)?;
        let name = opts.name.clone().unwrap_or_else(|| default_name(&path));
        let dtype = planned.info.dtype;
        let total = placement::whole_bytes(planned.tensors.values(), dtype);
        let summary = self.ledger.summary();
        placement::check_fits(&name, total, self.room(&summary))?;
        let info = planned.info.clone();
        let transient = placement::read_transient(planned.tensors.values(), dtype);
        let tokenizer = match &opts.tokenizer {
            Some(t) => Some(self.resolve_model_path(&t.to_string_lossy())?),
            None => None,
        };
        let weights = if self.dry {
            Weights::Planned(dry::Planned::Text(planned.cfg.clone()))
        } else {
            let te = text_encoder::load(&header, planned, tokenizer.as_deref(), &self.device)
                .map_err(RuntimeError::Model)?;
            tracing::info!("{name}: tokenizer from {}", te.tokenizer_from);
            Weights::Text(Box::new(te))
        };
        Ok(whole(name, path, info, total, transient, weights))
    }

    /// A Wan VAE, read whole; it must fit the free budget.
    fn read_vae(&mut self, path: PathBuf, header: Header, opts: &LoadOptions) -> Result<Loaded> {
        let planned = vae::plan(&header, opts.dtype, &self.device)?;
        let name = opts.name.clone().unwrap_or_else(|| default_name(&path));
        let dtype = planned.info.dtype;
        let total = placement::whole_bytes(planned.tensors.values(), dtype);
        let transient = placement::read_transient(planned.tensors.values(), dtype);
        let summary = self.ledger.summary();
        placement::check_fits(&name, total, self.room(&summary))?;
        let weights = if self.dry {
            Weights::Planned(dry::Planned::Vae(planned.cfg.clone()))
        } else {
            let model = vae::load(&header, &planned, &self.device).map_err(RuntimeError::Model)?;
            Weights::Vae(Box::new(model))
        };
        Ok(whole(name, path, planned.info, total, transient, weights))
    }

    /// Enters a freshly read model in the ledger and the registry, and logs
    /// where its bytes went: the one place a load becomes visible.
    fn admit(&mut self, l: Loaded, at: &str) -> ModelId {
        let id = self.registry.next_id();
        let weights = l.total - l.plan.offloaded;
        let pinned = match &l.weights {
            Weights::Dit(d) => d.pinned_bytes(),
            _ => 0,
        };
        self.ledger.admit(
            id,
            &l.name,
            Admission {
                weights,
                stream_buffer: l.plan.stream_buffer,
                offloaded: l.plan.offloaded,
                pinned,
            },
        );
        self.offload_peak = self.offload_peak.max(self.ledger.offloaded());
        let (partially, how) = if l.plan.offloaded == 0 {
            ("", format!("{} resident, 0 MiB offloaded", mib(weights)))
        } else {
            (
                " partially",
                format!(
                    "{} resident{}, {} offloaded{}",
                    mib(weights + l.plan.stream_buffer),
                    l.detail,
                    mib(l.plan.offloaded),
                    if pinned > 0 {
                        format!(" (held in {} of pinned host memory)", mib(pinned))
                    } else {
                        String::new()
                    }
                ),
            )
        };
        let i = &l.info;
        tracing::info!(
            "loaded {}{partially} ({} {}, {} layout, {} params, {}): {how}",
            l.name,
            i.arch,
            i.variant,
            i.layout,
            count_label(i.params),
            crate::dtype::label(i.dtype),
        );
        let name = l.name.clone();
        self.registry.insert(LoadedModel {
            id,
            name: l.name,
            path: l.path,
            info: l.info,
            loaded_at: at.to_string(),
            weights: l.weights,
        });
        self.record(at, "load", &name, l.transient, how);
        id
    }
}

/// A model loaded whole: nothing offloaded or streamed.
fn whole(
    name: String,
    path: PathBuf,
    info: ModelInfo,
    total: u64,
    transient: u64,
    weights: Weights,
) -> Loaded {
    Loaded {
        plan: Plan::whole(info.blocks),
        name,
        path,
        info,
        weights,
        total,
        detail: String::new(),
        transient,
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

pub(super) fn default_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}
