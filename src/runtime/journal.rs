//! What a run did that its manifest must record: which model files were
//! loaded and which seeds each sampling pass drew from.
//!
//! The host's shims append here as primitives succeed; `run.json` is built
//! from it at the end, so a shared result names exactly its inputs.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct LoadRecord {
    pub name: String,
    /// As the script wrote it (`builtin:...` or the file name it searched for).
    pub requested: String,
    pub path: PathBuf,
    pub arch: String,
}

#[derive(Debug, Clone)]
pub struct SampleRecord {
    pub model: String,
    /// None when the noise came from a tensor or no noise was added.
    pub seed: Option<u64>,
    /// Steps of the whole schedule (from `sigmas` when it was given).
    pub steps: usize,
    /// True when the script passed an explicit sigma list (scheduler and
    /// shift then did not apply).
    pub explicit_sigmas: bool,
    pub start: usize,
    pub end: Option<usize>,
    pub sampler: String,
    pub scheduler: String,
    pub cfg: f64,
    pub shift: f32,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Journal {
    pub loads: Vec<LoadRecord>,
    pub samples: Vec<SampleRecord>,
    /// Most bytes the ledger held on the device at once, seen after each load and sample.
    pub peak_device: u64,
    /// Each load, sample, offload and delete with the ledger's device bytes after it.
    pub timeline: Vec<(String, u64)>,
}

impl Journal {
    /// Appends `what` to the timeline with the ledger's `used` bytes after it.
    pub fn note(&mut self, what: String, used: u64) {
        self.peak_device = self.peak_device.max(used);
        self.timeline.push((what, used));
    }
}
