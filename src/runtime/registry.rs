//! Loaded models by id, and a record of the deleted ones. What a model is
//! and its weights live here; its bytes and whether it is on the device are
//! the ledger's alone.
//!
//! Remembering where a model was deleted lets a stale handle fail with
//! "model 'high' was deleted at demo.rhai:14" instead of a bare "not found".

use super::residency::WanResident;
use super::text_encoder::TextEncoder;
use super::vae::AnyVae;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

pub use super::info::ModelInfo;

pub type ModelId = u64;

/// The weights of a loaded model, by architecture.
pub enum Weights {
    Dit(Box<WanResident>),
    Text(Box<TextEncoder>),
    Vae(Box<AnyVae>),
    /// A dry runtime's model: config only (see `runtime::dry`).
    Planned(super::dry::Planned),
    /// A model whose prediction is the host's callable (`model_from_fn`: a
    /// script function). It holds no weights, so the ledger counts 0 bytes;
    /// the runtime never calls it, the host does (see `runtime::scripted`).
    Scripted(Box<dyn std::any::Any>),
}

impl Weights {
    /// Blocks resident on the device (all of them for unstreamed models).
    pub fn resident_blocks(&self) -> usize {
        match self {
            Weights::Dit(m) => m.resident_blocks(),
            Weights::Text(t) => t.encoder.config().num_layers,
            Weights::Vae(_) => 0,
            Weights::Planned(_) => 0,
            Weights::Scripted(_) => 0,
        }
    }
}

pub struct LoadedModel {
    pub id: ModelId,
    pub name: String,
    pub path: PathBuf,
    pub info: ModelInfo,
    /// Where it was loaded, e.g. "demo.rhai:12".
    pub loaded_at: String,
    pub weights: Weights,
}

impl LoadedModel {
    /// The Wan DiT, or an error naming what this model is instead.
    pub fn dit(&self) -> Result<&WanResident, String> {
        match &self.weights {
            Weights::Dit(m) => Ok(m),
            _ => Err(self.not_a("a Wan diffusion model (DiT)")),
        }
    }

    /// The Wan DiT, mutable (for LoRAs), or an error naming what this model is.
    pub fn dit_mut(&mut self) -> Result<&mut WanResident, String> {
        if !matches!(self.weights, Weights::Dit(_)) {
            return Err(self.not_a("a Wan diffusion model (DiT)"));
        }
        match &mut self.weights {
            Weights::Dit(m) => Ok(m),
            _ => unreachable!("checked above"),
        }
    }

    /// The Wan VAE (2.1 or 2.2), or an error naming what this model is instead.
    pub fn vae(&self) -> Result<&AnyVae, String> {
        match &self.weights {
            Weights::Vae(v) => Ok(v),
            _ => Err(self.not_a("a VAE")),
        }
    }

    /// The host's callable of a `model_from_fn` model, `None` for any other.
    pub fn scripted(&self) -> Option<&dyn std::any::Any> {
        match &self.weights {
            Weights::Scripted(f) => Some(f.as_ref()),
            _ => None,
        }
    }

    /// The config of a model on a dry runtime, `None` for real weights.
    pub fn planned(&self) -> Option<&super::dry::Planned> {
        match &self.weights {
            Weights::Planned(p) => Some(p),
            _ => None,
        }
    }

    /// The umT5 text encoder, or an error naming what this model is instead.
    pub fn text_encoder(&self) -> Result<&TextEncoder, String> {
        match &self.weights {
            Weights::Text(t) => Ok(t),
            _ => Err(self.not_a("a text encoder (umT5)")),
        }
    }

    /// "'vae' is a wan-vae, not <what>": for primitives handed the wrong model.
    pub fn not_a(&self, what: &str) -> String {
        let planned_kind = match &self.weights {
            Weights::Planned(super::dry::Planned::Dit(_)) => "a Wan diffusion model (DiT)",
            Weights::Planned(super::dry::Planned::Vae(_)) => "a VAE",
            Weights::Planned(super::dry::Planned::Text(_)) => "a text encoder (umT5)",
            _ => "",
        };
        if planned_kind == what {
            return format!(
                "'{}' has no weights while planning: this primitive is not covered by baton plan",
                self.name
            );
        }
        format!("'{}' is a {} model, not {what}", self.name, self.info.arch)
    }
}

#[derive(Default)]
pub struct Registry {
    next_id: ModelId,
    models: BTreeMap<ModelId, LoadedModel>,
    deleted: HashMap<ModelId, (String, String)>,
}

impl Registry {
    pub fn next_id(&mut self) -> ModelId {
        self.next_id += 1;
        self.next_id
    }

    pub fn insert(&mut self, m: LoadedModel) {
        self.models.insert(m.id, m);
    }

    /// Removes the model, dropping its weights, and remembers where.
    pub fn remove(&mut self, id: ModelId, at: &str) -> Option<LoadedModel> {
        let m = self.models.remove(&id)?;
        self.deleted.insert(id, (m.name.clone(), at.to_string()));
        Some(m)
    }

    pub fn get(&self, id: ModelId) -> Result<&LoadedModel, String> {
        self.models.get(&id).ok_or_else(|| self.gone(id))
    }

    pub fn get_mut(&mut self, id: ModelId) -> Result<&mut LoadedModel, String> {
        if self.models.contains_key(&id) {
            Ok(self.models.get_mut(&id).expect("checked"))
        } else {
            Err(self.gone(id))
        }
    }

    pub fn is_deleted(&self, id: ModelId) -> bool {
        self.deleted.contains_key(&id)
    }

    fn gone(&self, id: ModelId) -> String {
        match self.deleted.get(&id) {
            Some((name, at)) => format!("model '{name}' was deleted at {at}"),
            None => format!("no model with id {id}"),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &LoadedModel> {
        self.models.values()
    }

    pub fn names(&self) -> Vec<String> {
        self.models.values().map(|m| m.name.clone()).collect()
    }
}
