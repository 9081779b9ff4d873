//! Scanning a checkpoint's weights for NaN and Inf.
//!
//! Reading every byte of a 28 GB expert takes as long as loading it, so
//! this runs only when asked (`load_model(..., #{ check_weights: true })`);
//! without it, the sampler's per-step check still stops a run whose model
//! turns a latent into NaN.

use super::{CheckpointError, Header};
use safetensors::Dtype;

/// Names of the floating-point tensors holding a NaN or an Inf, with the
/// count of such values in each.
pub fn non_finite_tensors(header: &Header) -> Result<Vec<(String, usize)>, CheckpointError> {
    let mut maps = Vec::with_capacity(header.files.len());
    for path in &header.files {
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only map; the header check already bounded every range
        // by the file length measured when it was read.
        maps.push(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?);
    }
    let mut bad = Vec::new();
    for (name, e) in &header.tensors {
        let Some(bytes) = maps.get(e.file).and_then(|m| m.get(e.start..e.end)) else {
            return Err(CheckpointError::Corrupt {
                path: header.files.get(e.file).unwrap_or(&header.path).clone(),
                reason: format!("tensor '{name}' lies past the end of the file (it shrank?)"),
            });
        };
        let n = count_non_finite(e.dtype, bytes);
        if n > 0 {
            bad.push((name.clone(), n));
        }
    }
    Ok(bad)
}

/// Non-finite values in little-endian `bytes` of `dtype` (0 for integers).
pub fn count_non_finite(dtype: Dtype, bytes: &[u8]) -> usize {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .filter(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
            .count(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .filter(|c| !f64::from_le_bytes((*c).try_into().expect("8 bytes")).is_finite())
            .count(),
        // f16: exponent bits 0x7c00 all set; bf16: 0x7f80 all set.
        Dtype::F16 => bytes
            .chunks_exact(2)
            .filter(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00)
            .count(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .filter(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80)
            .count(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nan_and_inf_in_each_float_type() {
        let f32s: Vec<u8> = [1.0f32, f32::NAN, f32::INFINITY, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(count_non_finite(Dtype::F32, &f32s), 2);
        let h: Vec<u8> = [half::f16::ONE, half::f16::NAN, half::f16::NEG_INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(count_non_finite(Dtype::F16, &h), 2);
        let b: Vec<u8> = [half::bf16::ONE, half::bf16::NAN, half::bf16::MAX]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(count_non_finite(Dtype::BF16, &b), 1);
    }
}
