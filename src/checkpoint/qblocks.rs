//! Block-quantized GGUF weights on their way into a model: exact
//! dequantization (candle's `k_quants` block formulas, checked bit for bit
//! against gguf-py's on every type in `tests/gguf_dequant.rs`), and the
//! "packed" form a layer gets when it keeps the blocks.
//!
//! A `VarBuilder` only hands out `Tensor`s, so a layer that keeps a weight
//! quantized asks for the virtual tensor `<name>.ggml` (see
//! `CheckpointSource`'s backend): a U8 tensor holding the GGUF type id in
//! byte 0, then the blocks as stored. [`unpack`] turns it into a `QTensor`.

use super::TensorEntry;
pub use crate::ggml::{qtensor, qtensor_on, unpack, LORA_A, LORA_B, SUFFIX};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Result, Tensor};
use std::path::Path;

/// One quantized tensor dequantized to f32 (errors name the file and tensor).
pub fn dequantize(
    path: &Path,
    name: &str,
    bytes: &[u8],
    ty: GgmlDType,
    shape: &[usize],
) -> Result<Tensor> {
    qtensor(bytes, ty, shape)
        .and_then(|q| q.dequantize(&Device::Cpu))
        .map_err(|e| {
            candle_core::Error::Msg(format!(
                "{}: tensor '{name}' ({} {shape:?}): {e}",
                path.display(),
                super::gguf::type_name(ty)
            ))
        })
}

/// The packed form of a quantized entry (type id, then its blocks).
pub fn packed(bytes: &[u8], e: &TensorEntry) -> Result<Tensor> {
    let ty = e.ggml.filter(|_| e.kept_as_stored());
    let ty =
        ty.ok_or_else(|| candle_core::Error::Msg("not a GGUF matrix kept as stored".into()))?;
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.push(crate::ggml::type_id(ty) as u8);
    v.extend_from_slice(bytes);
    let n = v.len();
    Tensor::from_vec(v, n, &Device::Cpu)
}
