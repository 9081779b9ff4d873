//! fp8 (E4M3) weights to a wider dtype on a CUDA card.
//!
//! candle 0.11.1 looks its cast kernels up as `cast_f8e4m3_<dst>` while
//! candle-kernels names them `cast_f8_e4m3_<dst>`, so every fp8 cast on a
//! card fails with "named symbol not found" (seen on an H200). This module
//! decodes without the cast kernel: the weight's bytes are copied out as
//! U8 (one byte a weight, device to device) and looked up in a 256-entry
//! table of every E4M3 value in the target dtype (`index_select`). Every
//! E4M3 value is exact in f16, bf16 and f32, so the result is bit for bit
//! what a working cast would give.

use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{
    CpuStorage, CustomOp1, DType, Device, DeviceLocation, Layout, Result, Shape, Tensor,
};
use std::sync::Mutex;

/// `w` (F8E4M3, on a card) in `dtype`.
pub fn widen(w: &Tensor, dtype: DType) -> Result<Tensor> {
    let bits = w.apply_op1_no_bwd(&Bits)?;
    let table = table(w.device(), dtype)?;
    table
        .index_select(&bits.flatten_all()?, 0)?
        .reshape(w.shape())
}

/// The 256 E4M3 values in `dtype` on `dev`, made once per device and dtype.
fn table(dev: &Device, dtype: DType) -> Result<Tensor> {
    static TABLES: Mutex<Vec<(DeviceLocation, DType, Tensor)>> = Mutex::new(Vec::new());
    let mut tables = TABLES.lock().expect("fp8 table lock");
    if let Some((_, _, t)) = tables
        .iter()
        .find(|(loc, d, _)| *loc == dev.location() && *d == dtype)
    {
        return Ok(t.clone());
    }
    let values: Vec<f32> = (0..=255u8)
        .map(|b| float8::F8E4M3::from_bits(b).to_f32())
        .collect();
    let t = Tensor::from_vec(values, 256, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    tables.push((dev.location(), dtype, t.clone()));
    Ok(t)
}

/// An F8E4M3 tensor's bytes as a U8 tensor of the same shape.
struct Bits;

impl CustomOp1 for Bits {
    fn name(&self) -> &'static str {
        "fp8-bits"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("fp8-bits is for CUDA tensors (the CPU casts fp8 itself)")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("fp8-bits needs a contiguous tensor");
        };
        let src = float8::F8E4M3::as_cuda_slice(s)?;
        let n = end - start;
        let stream = s.device.cuda_stream();
        // SAFETY: every byte is written by the copy right after, on the
        // same stream.
        let mut dst = unsafe { stream.alloc::<u8>(n) }
            .map_err(|e| candle_core::Error::Msg(format!("fp8-bits: {e}")))?;
        let view = src.slice(start..end);
        // SAFETY: F8E4M3 is one byte, so n bytes are exactly the view.
        let bytes = unsafe { view.transmute::<u8>(n) }
            .ok_or_else(|| candle_core::Error::Msg("fp8-bits: view too short".into()))?;
        stream
            .memcpy_dtod(&bytes, &mut dst)
            .map_err(|e| candle_core::Error::Msg(format!("fp8-bits: {e}")))?;
        Ok((
            u8::wrap_cuda_slice(dst, s.device.clone()),
            l.shape().clone(),
        ))
    }
}
