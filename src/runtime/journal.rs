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

/// The memory side of a run (every load, use and delete with the bytes
/// after it) is the runtime's `timeline`; this holds only what the manifest
/// adds to it.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    pub loads: Vec<LoadRecord>,
    pub samples: Vec<SampleRecord>,
}
