//! What a loaded model is, in one small type that the loaders fill in and
//! the registry, the host's getters and `vram()` read.

use candle_core::DType;

/// What a loaded model is, learned from its header: for messages, getters
/// and `vram()`, whatever the architecture.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// "wan-dit", "wan-vae" or "umt5".
    pub arch: &'static str,
    /// e.g. "14B", "tiny".
    pub variant: String,
    /// Key layout of the file, e.g. "original", "diffusers", "hf".
    pub layout: &'static str,
    /// The resident dtype.
    pub dtype: DType,
    pub params: u64,
    /// Transformer blocks (0 for models that are not block-streamed).
    pub blocks: usize,
}
