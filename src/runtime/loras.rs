//! LoRAs on a loaded DiT: applied and removed in place, all or nothing, with
//! the factors counted in the ledger and the change on the timeline.

use super::error::{plain_error, Result, RuntimeError};
use super::memstat;
use super::registry::ModelId;
use super::runtime::Runtime;
use super::size::mib;
use crate::lora::Lora;
use std::sync::Arc;

impl Runtime {
    /// Adds the LoRA at `path` with `strength` on top of the model's current
    /// LoRAs. Resident layers are rebuilt with the delta baked in; streamed
    /// blocks get it as they stream. On any error the model is unchanged.
    pub fn apply_lora(&mut self, id: ModelId, path: &str, strength: f64) -> Result<()> {
        self.apply_lora_at(id, path, strength, "")
    }

    /// `apply_lora`, recorded on the timeline at script position `at`.
    pub fn apply_lora_at(
        &mut self,
        id: ModelId,
        path: &str,
        strength: f64,
        at: &str,
    ) -> Result<()> {
        if !strength.is_finite() {
            return Err(RuntimeError::Input(format!(
                "apply_lora: strength must be a finite number, got {strength}"
            )));
        }
        let resolved = self.resolve_model_path(path)?;
        let m = self.model(id)?;
        let dit = m.dit().map_err(RuntimeError::Input)?;
        if dit.dtype == candle_core::DType::F8E4M3 {
            return Err(RuntimeError::Input(format!(
                "apply_lora: '{}' keeps its weights in fp8 (dtype \"fp8\"), where a LoRA \
                 cannot be merged; load it with dtype \"bf16\" to apply LoRAs",
                m.name
            )));
        }
        if dit.loras().iter().any(|(l, _)| l.path == resolved) {
            return Err(RuntimeError::Input(format!(
                "LoRA '{path}' is already applied to '{}'; remove_lora it first to change its strength",
                m.name
            )));
        }
        let lora = Lora::load(&resolved, dit.source().entries()).map_err(RuntimeError::Input)?;
        let free = self.ledger.free();
        if lora.bytes > free {
            return Err(RuntimeError::Budget(format!(
                "LoRA '{path}' needs {} for its factors but only {} of the budget is free ({})",
                mib(lora.bytes),
                mib(free),
                self.ledger.summary()
            )));
        }
        let (bytes, layers, name) = (lora.bytes, lora.entries.len(), lora.name());
        let mut set = dit.loras().clone();
        set.push((Arc::new(lora), strength as f32));
        self.set_loras(id, set)?;
        let model = self.model(id)?.name.clone();
        tracing::info!(
            "applied LoRA {name} to {model} at strength {strength}: {layers} layers, {} of factors",
            mib(bytes)
        );
        self.record(at, "lora", &model, 0, format!("+{name} ({})", mib(bytes)));
        Ok(())
    }

    /// Removes the LoRA loaded from `path` (as resolved, or by file name);
    /// the other LoRAs stay. The touched layers are rebuilt from the
    /// checkpoint, so with no LoRA left the weights are bit-identical to a
    /// fresh load.
    pub fn remove_lora(&mut self, id: ModelId, path: &str) -> Result<()> {
        self.remove_lora_at(id, path, "")
    }

    /// `remove_lora`, recorded on the timeline at script position `at`.
    pub fn remove_lora_at(&mut self, id: ModelId, path: &str, at: &str) -> Result<()> {
        let m = self.model(id)?;
        let dit = m.dit().map_err(RuntimeError::Input)?;
        let resolved = self.resolve_model_path(path).ok();
        let pos = dit.loras().iter().position(|(l, _)| {
            Some(&l.path) == resolved.as_ref()
                || l.path.file_name() == std::path::Path::new(path).file_name()
        });
        let Some(pos) = pos else {
            let on: Vec<String> = dit.loras().iter().map(|(l, _)| l.name()).collect();
            return Err(RuntimeError::Input(format!(
                "LoRA '{path}' is not applied to '{}' (applied: {})",
                m.name,
                if on.is_empty() {
                    "none".into()
                } else {
                    on.join(", ")
                }
            )));
        };
        let mut set = dit.loras().clone();
        let (removed, _) = set.remove(pos);
        self.set_loras(id, set)?;
        let model = self.model(id)?.name.clone();
        tracing::info!(
            "removed LoRA {} from {model}: {} freed",
            removed.name(),
            mib(removed.bytes)
        );
        let note = format!("-{} ({})", removed.name(), mib(removed.bytes));
        self.record(at, "lora", &model, 0, note);
        Ok(())
    }

    /// Installs `set` on the model and brings the ledger in line.
    fn set_loras(&mut self, id: ModelId, set: crate::lora::backend::LoraSet) -> Result<()> {
        let m = self.registry.get_mut(id).map_err(RuntimeError::Model)?;
        let name = m.name.clone();
        let dit = m.dit_mut().map_err(RuntimeError::Input)?;
        dit.set_loras(set).map_err(|e| {
            RuntimeError::Model(format!("applying LoRAs to '{name}': {}", plain_error(&e)))
        })?;
        let (lora, pinned) = (dit.lora_bytes(), dit.pinned_bytes());
        self.ledger.set_lora(id, lora);
        if self.ledger.on_device(id) {
            self.ledger.set_pinned(id, pinned);
        }
        memstat::trim();
        Ok(())
    }
}
