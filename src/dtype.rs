//! Dtypes by name and by weight: what a file holds most of, what a model is
//! held in, and how both are written in messages and scripts.
//!
//! It sits below the checkpoint readers' users (runtime, host, inspect), so
//! none of them has to reach into another for a label or a default.

use crate::checkpoint::TensorEntry;
use candle_core::DType;

/// The float dtype holding most bytes among `entries` (f32 when none is half).
pub fn dominant_of<'a>(entries: impl Iterator<Item = &'a TensorEntry>) -> DType {
    let mut bytes = [0u64; 3]; // f32, f16, bf16
    for e in entries {
        match e.dtype {
            safetensors::Dtype::F16 => bytes[1] += e.bytes() as u64,
            safetensors::Dtype::BF16 => bytes[2] += e.bytes() as u64,
            // An fp8 file is dequantised once at load and held in bf16 (2
            // bytes a weight), even where its f32 norms outweigh the linears.
            safetensors::Dtype::F8_E4M3 => return DType::BF16,
            _ => bytes[0] += e.bytes() as u64,
        }
    }
    let i = (0..3).max_by_key(|&i| bytes[i]).unwrap_or(0);
    [DType::F32, DType::F16, DType::BF16][i]
}

/// The resident dtype of a DiT whose file is mostly `file_label` (as
/// `checkpoint::detect` names it) when the script asks for none.
pub fn resident_default(file_label: &str) -> DType {
    match file_label {
        "f16" => DType::F16,
        // fp8 weights are dequantised once at load; bf16 keeps them at 2 bytes.
        "bf16" | "fp8_e4m3" => DType::BF16,
        _ => DType::F32,
    }
}

/// Whether a file tensor of `file` dtype is read into `resident` without a
/// conversion (and so without a second buffer).
pub fn same_storage(file: safetensors::Dtype, resident: DType) -> bool {
    matches!(
        (file, resident),
        (safetensors::Dtype::F32, DType::F32)
            | (safetensors::Dtype::F16, DType::F16)
            | (safetensors::Dtype::BF16, DType::BF16)
            | (safetensors::Dtype::F8_E4M3, DType::F8E4M3)
    )
}

/// The name scripts and messages use for a dtype.
pub fn label(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F8E4M3 => "fp8",
        _ => "other",
    }
}

/// A compute dtype named by a script: "f32", "f16" or "bf16". "fp8" is
/// refused here: it exists only as `load_model`'s resident dtype.
pub fn parse_compute(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        "fp8" => Err("dtype \"fp8\" exists only for load_model (fp8 weights kept resident)".into()),
        other => Err(format!(
            "unknown dtype \"{other}\" (use \"f32\", \"f16\" or \"bf16\")"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_parse() {
        for d in [DType::F32, DType::F16, DType::BF16] {
            assert_eq!(parse_compute(label(d)), Ok(d));
        }
        assert!(parse_compute("fp8").unwrap_err().contains("load_model"));
        assert!(parse_compute("f64").unwrap_err().contains("unknown dtype"));
    }

    #[test]
    fn fp8_files_default_to_bf16() {
        assert_eq!(resident_default("fp8_e4m3"), DType::BF16);
        assert_eq!(resident_default("f16"), DType::F16);
        assert_eq!(resident_default("f32"), DType::F32);
    }
}
