//! GGML block types and the packed form a layer keeps a GGUF weight in:
//! below `checkpoint/` and `models/` alike (both use it; neither imports
//! the other for it), over candle's quantized types.
//!
//! A `VarBuilder` only hands out `Tensor`s, so a layer that keeps a weight
//! as stored asks for the virtual tensor `<name>.ggml`: a U8 tensor holding
//! the GGUF type id in byte 0, then the blocks as stored; [`unpack`] turns
//! it into a `QTensor`. A LoRA on such a weight comes as `<name>.lora_a` /
//! `.lora_b` (see `lora::backend`).

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};

/// The suffix of the virtual packed tensor beside a quantized weight.
pub const SUFFIX: &str = ".ggml";
/// The virtual LoRA factors beside a quantized weight (see
/// `lora::backend`): `A` [R, in] and `B` [out, R], strengths folded into `B`.
pub const LORA_A: &str = ".lora_a";
pub const LORA_B: &str = ".lora_b";

/// The GGML type of a GGUF type id, or an error naming the type.
pub fn ggml_type(id: u32) -> std::result::Result<GgmlDType, String> {
    Ok(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        _ => {
            let name = match id {
                16 => "IQ2_XXS",
                17 => "IQ2_XS",
                18 => "IQ3_XXS",
                19 => "IQ1_S",
                20 => "IQ4_NL",
                21 => "IQ3_S",
                22 => "IQ2_S",
                23 => "IQ4_XS",
                29 => "IQ1_M",
                9 => "Q8_1",
                15 => "Q8_K",
                24 => "I8",
                25 => "I16",
                26 => "I32",
                27 => "I64",
                28 => "F64",
                34 => "TQ1_0",
                35 => "TQ2_0",
                _ => return Err(format!("unknown GGML type id {id}")),
            };
            let why = if name.starts_with("IQ") {
                "i-quants (IQ*) are not supported; use a Q*_0/Q*_1/Q*_K file"
            } else {
                "not a weight type baton reads"
            };
            return Err(format!("type {name} (id {id}): {why}"));
        }
    })
}

/// GGUF's name of a type (Q4_K, F16, ...).
pub fn type_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// Whether a GGML type is block-quantized (not a plain float).
pub fn is_quantized(t: GgmlDType) -> bool {
    !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Bytes a tensor of `numel` elements takes in `t`, or why it cannot.
pub fn byte_size(t: GgmlDType, numel: u64) -> std::result::Result<u64, String> {
    let bs = t.block_size() as u64;
    if !numel.is_multiple_of(bs) {
        return Err(format!(
            "{numel} elements is not a whole number of {} blocks of {bs}",
            type_name(t)
        ));
    }
    Ok(numel / bs * t.type_size() as u64)
}

/// The blocks of one tensor as a `QTensor` of torch-order `shape` on the CPU.
pub fn qtensor(bytes: &[u8], ty: GgmlDType, shape: &[usize]) -> Result<QTensor> {
    qtensor_on(bytes, ty, shape, &Device::Cpu)
}

/// The same on `dev` (on a card: candle's quantized CUDA storage).
pub fn qtensor_on(bytes: &[u8], ty: GgmlDType, shape: &[usize], dev: &Device) -> Result<QTensor> {
    let numel: usize = shape.iter().product();
    let want = byte_size(ty, numel as u64).map_err(candle_core::Error::Msg)?;
    if want != bytes.len() as u64 {
        candle_core::bail!(
            "{} x {shape:?} takes {want} bytes, the tensor has {}",
            type_name(ty),
            bytes.len()
        );
    }
    qtensor_from_ggml(ty, bytes, shape.to_vec(), dev)
}

/// A packed tensor back as a `QTensor` of `shape`.
pub fn unpack(packed: &Tensor, shape: &[usize], dev: &Device) -> Result<QTensor> {
    let v = packed.to_vec1::<u8>()?;
    let ty = ggml_type(u32::from(v[0])).map_err(candle_core::Error::Msg)?;
    qtensor_on(&v[1..], ty, shape, dev)
}

/// GGUF's id of a type (the inverse of [`ggml_type`]).
pub fn type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}
