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
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use std::path::Path;

/// The suffix of the virtual packed tensor beside a quantized weight.
pub const SUFFIX: &str = ".ggml";
/// The virtual LoRA factors beside a quantized weight (see
/// `lora::backend`): `A` [R, in] and `B` [out, R], strengths folded into `B`.
pub const LORA_A: &str = ".lora_a";
pub const LORA_B: &str = ".lora_b";

/// The blocks of one tensor as a `QTensor` of torch-order `shape` on the CPU.
pub fn qtensor(bytes: &[u8], ty: GgmlDType, shape: &[usize]) -> Result<QTensor> {
    qtensor_on(bytes, ty, shape, &Device::Cpu)
}

/// The same on `dev` (on a card: candle's quantized CUDA storage).
pub fn qtensor_on(bytes: &[u8], ty: GgmlDType, shape: &[usize], dev: &Device) -> Result<QTensor> {
    let numel: usize = shape.iter().product();
    let want = super::gguf::byte_size(ty, numel as u64).map_err(candle_core::Error::Msg)?;
    if want != bytes.len() as u64 {
        candle_core::bail!(
            "{} x {shape:?} takes {want} bytes, the tensor has {}",
            super::gguf::type_name(ty),
            bytes.len()
        );
    }
    qtensor_from_ggml(ty, bytes, shape.to_vec(), dev)
}

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
    v.push(type_id(ty));
    v.extend_from_slice(bytes);
    let n = v.len();
    Tensor::from_vec(v, n, &Device::Cpu)
}

/// A packed tensor back as a `QTensor` of `shape`.
pub fn unpack(packed: &Tensor, shape: &[usize], dev: &Device) -> Result<QTensor> {
    let v = packed.to_vec1::<u8>()?;
    let ty = super::gguf::ggml_type(u32::from(v[0])).map_err(candle_core::Error::Msg)?;
    qtensor_on(&v[1..], ty, shape, dev)
}

fn type_id(t: GgmlDType) -> u8 {
    super::gguf_write::type_id(t) as u8
}
