//! The ledger: the one place where device bytes are counted.
//!
//! Every byte of weights a model keeps on the device is admitted here when it
//! is loaded and released here when it is deleted; offloading, reloading and
//! LoRAs move bytes between the entry's fields through the transitions below,
//! and nothing else writes an entry. `vram()` reads nothing else, and the
//! registry asks the ledger whether a model is on the device.

use super::size::mib;
use super::ModelId;
use std::collections::BTreeMap;

/// One model's bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub name: String,
    /// Weights resident on the device.
    pub weights: u64,
    /// Space reserved on the device for the block being streamed in.
    pub stream_buffer: u64,
    /// Weights not on the device, streamed from the checkpoint at each forward.
    pub offloaded: u64,
    /// Weights held in host memory outside the device (after `offload_model`).
    pub host: u64,
    /// LoRA factors held for `apply_lora` (the merged weights themselves
    /// replace the originals in `weights`, so they cost nothing extra). They
    /// stay counted as resident even after `offload_model`.
    pub lora: u64,
    /// Offloaded weights held in page-locked host memory, the source the
    /// copy stream streams them from (CUDA only; the CPU streams straight
    /// from the checkpoint file, so this is 0 there).
    pub pinned: u64,
    /// False after `offload_model` until the next use brings it back.
    pub on_device: bool,
}

impl Entry {
    /// Device bytes this model occupies.
    pub fn resident(&self) -> u64 {
        self.weights + self.stream_buffer + self.lora
    }

    /// Bytes of all its weights in the resident dtype, wherever they are.
    pub fn total(&self) -> u64 {
        self.weights + self.offloaded + self.host
    }
}

/// Where a freshly loaded model's bytes went (see `placement::Plan`).
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// Weights resident on the device.
    pub weights: u64,
    pub stream_buffer: u64,
    /// Weights streamed at each forward.
    pub offloaded: u64,
    /// Page-locked host bytes holding the streamed weights (CUDA).
    pub pinned: u64,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    budget: u64,
    entries: BTreeMap<ModelId, Entry>,
}

impl Ledger {
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            entries: BTreeMap::new(),
        }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
    }

    pub fn used(&self) -> u64 {
        self.entries.values().map(Entry::resident).sum()
    }

    pub fn free(&self) -> u64 {
        self.budget.saturating_sub(self.used())
    }

    /// Bytes streamed from checkpoints rather than held on the device.
    pub fn offloaded(&self) -> u64 {
        self.entries.values().map(|e| e.offloaded).sum()
    }

    pub fn host(&self) -> u64 {
        self.entries.values().map(|e| e.host).sum()
    }

    /// Page-locked host bytes holding offloaded blocks (CUDA streaming).
    pub fn pinned(&self) -> u64 {
        self.entries.values().map(|e| e.pinned).sum()
    }

    /// Enters a freshly loaded model, on the device.
    pub fn admit(&mut self, id: ModelId, name: &str, a: Admission) {
        let entry = Entry {
            name: name.to_string(),
            weights: a.weights,
            stream_buffer: a.stream_buffer,
            offloaded: a.offloaded,
            host: 0,
            lora: 0,
            pinned: a.pinned,
            on_device: true,
        };
        self.entries.insert(id, entry);
    }

    /// `offload_model`: the resident weights move to host memory and the
    /// stream buffers and pinned copies are given up. Returns the bytes now
    /// held in host memory; `None` for an unknown id.
    pub fn offload(&mut self, id: ModelId) -> Option<u64> {
        let e = self.entries.get_mut(&id)?;
        if e.on_device {
            e.host = e.weights;
            e.weights = 0;
            e.stream_buffer = 0;
            e.pinned = 0;
            e.on_device = false;
        }
        Some(e.host)
    }

    /// Brings an offloaded model's weights back onto the device with its
    /// stream buffers (and, on a card, its pinned copies). Returns the bytes
    /// brought back.
    pub fn reload(&mut self, id: ModelId, stream_buffer: u64, pinned: u64) -> Option<u64> {
        let e = self.entries.get_mut(&id)?;
        if e.on_device {
            return Some(0);
        }
        let back = e.host;
        e.weights = back;
        e.host = 0;
        e.stream_buffer = stream_buffer;
        e.pinned = pinned;
        e.on_device = true;
        Some(back)
    }

    /// The bytes of the LoRA factors a model now holds.
    pub fn set_lora(&mut self, id: ModelId, bytes: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.lora = bytes;
        }
    }

    /// Page-locked copies re-made after a LoRA change (CUDA).
    pub fn set_pinned(&mut self, id: ModelId, bytes: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.pinned = bytes;
        }
    }

    pub fn release(&mut self, id: ModelId) -> Option<Entry> {
        self.entries.remove(&id)
    }

    pub fn get(&self, id: ModelId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    /// Whether the model's weights are on the device (false after
    /// `offload_model`, and for unknown ids).
    pub fn on_device(&self, id: ModelId) -> bool {
        self.entries.get(&id).is_some_and(|e| e.on_device)
    }

    pub fn entries(&self) -> impl Iterator<Item = (ModelId, &Entry)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    /// "loaded: high: 560 MiB, low: 560 MiB" (or "nothing loaded"), for
    /// messages that refuse a load.
    pub fn summary(&self) -> String {
        let models: Vec<String> = self
            .entries
            .values()
            .map(|e| format!("{}: {}", e.name, mib(e.resident())))
            .collect();
        if models.is_empty() {
            "nothing loaded".into()
        } else {
            format!("loaded: {}", models.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_and_free_follow_admit_and_release() {
        let mut l = Ledger::new(100);
        l.admit(
            1,
            "a",
            Admission {
                weights: 60,
                stream_buffer: 10,
                offloaded: 5,
                pinned: 0,
            },
        );
        assert_eq!((l.used(), l.free()), (70, 30));
        l.admit(
            2,
            "b",
            Admission {
                weights: 50,
                ..Default::default()
            },
        );
        assert_eq!((l.used(), l.free()), (120, 0));
        l.release(1);
        assert_eq!((l.used(), l.free()), (50, 50));
    }

    #[test]
    fn offload_and_reload_move_weights_and_keep_loras_resident() {
        let mut l = Ledger::new(1000);
        let a = Admission {
            weights: 300,
            stream_buffer: 20,
            offloaded: 100,
            pinned: 100,
        };
        l.admit(7, "m", a);
        l.set_lora(7, 5);
        assert_eq!(l.used(), 325);
        assert_eq!(l.offload(7), Some(300));
        assert!(!l.on_device(7));
        let e = l.get(7).unwrap().clone();
        assert_eq!(
            (e.resident(), e.host, e.pinned, e.total()),
            (5, 300, 0, 400)
        );
        // A second offload changes nothing.
        assert_eq!(l.offload(7), Some(300));
        assert_eq!(l.reload(7, 20, 100), Some(300));
        let e = l.get(7).unwrap();
        assert!(e.on_device);
        assert_eq!((e.resident(), e.host, e.total()), (325, 0, 400));
        assert_eq!(l.summary(), "loaded: m: 0.0 MiB");
    }
}
