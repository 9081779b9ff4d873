//! The ledger: the one place where device bytes are counted.
//!
//! Every byte of weights a model keeps on the device is admitted here when it
//! is loaded and released here when it is deleted or offloaded; `vram()` reads
//! nothing else.

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
}

impl Entry {
    /// Device bytes this model occupies.
    pub fn resident(&self) -> u64 {
        self.weights + self.stream_buffer + self.lora
    }
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

    /// Records (or replaces) a model's bytes.
    pub fn admit(&mut self, id: ModelId, entry: Entry) {
        self.entries.insert(id, entry);
    }

    pub fn release(&mut self, id: ModelId) -> Option<Entry> {
        self.entries.remove(&id)
    }

    pub fn get(&self, id: ModelId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn entries(&self) -> impl Iterator<Item = (ModelId, &Entry)> {
        self.entries.iter().map(|(k, v)| (*k, v))
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
            Entry {
                name: "a".into(),
                weights: 60,
                stream_buffer: 10,
                offloaded: 5,
                host: 0,
                lora: 0,
                pinned: 0,
            },
        );
        assert_eq!((l.used(), l.free()), (70, 30));
        l.admit(
            2,
            Entry {
                name: "b".into(),
                weights: 50,
                ..Default::default()
            },
        );
        assert_eq!((l.used(), l.free()), (120, 0));
        l.release(1);
        assert_eq!((l.used(), l.free()), (50, 50));
    }
}
