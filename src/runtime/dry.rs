//! The dry runtime behind `baton plan`: models are read as headers only and
//! operations return correctly shaped stand-ins, so a script runs through
//! every load, sample and delete in a moment, and the timeline records what
//! a real run would hold.
//!
//! Stand-in outputs are a zero broadcast to the real shape (one element of
//! storage), so even a full-size 720p decode costs nothing to plan.

use crate::models::umt5::UmT5Config;
use crate::models::wan::WanConfig;
use crate::models::wan_vae::VaeKind;
use candle_core::{DType, Device, Result, Tensor};

/// What a dry runtime keeps of a model: its config, never its weights.
pub enum Planned {
    Dit(WanConfig),
    Text(UmT5Config),
    Vae(VaeKind),
}

/// A zero tensor of `shape` with one element of storage.
pub fn stand_in(shape: &[usize]) -> Result<Tensor> {
    Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as(shape)
}

/// What `encode_text` would return: [1, rows, d_model], allocated for real
/// (a few MiB even for umT5-XXL) because scripts keep contexts alive across
/// the whole run, and the plan counts what the planning process holds.
pub fn text_context(cfg: &UmT5Config, rows: usize) -> Result<Tensor> {
    Tensor::zeros((1, rows, cfg.d_model), DType::F32, &Device::Cpu)
}
