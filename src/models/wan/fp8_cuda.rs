//! fp8 (E4M3) weights to a wider dtype on a CUDA card.
//!
//! candle 0.11.1 looks its cast kernels up as `cast_f8e4m3_<dst>` while
//! candle-kernels names them `cast_f8_e4m3_<dst>`, so every fp8 cast on a
//! card fails with "named symbol not found" (seen on an H200). This module
//! decodes without the cast kernel, in one pass: `fp8_decode.cu`, compiled
//! by NVRTC at first use. Where that cannot run, the older way stays: the
//! weight's bytes are copied out as U8 (one byte a weight, device to device)
//! and looked up in a 256-entry table of every E4M3 value in the target
//! dtype (`index_select`). Every E4M3 value is exact in f16, bf16 and f32,
//! so both give bit for bit what a working cast would.

use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda::{CudaDType, CudaStorage, WrapErr};
use candle_core::{
    CpuStorage, CustomOp1, DType, Device, DeviceLocation, Layout, Result, Shape, Tensor,
};
use std::sync::Mutex;

/// `w` (F8E4M3, on a card) in `dtype`.
pub fn widen(w: &Tensor, dtype: DType) -> Result<Tensor> {
    if matches!(dtype, DType::BF16 | DType::F16 | DType::F32) && KERNEL_FAILED.get().is_none() {
        match w.apply_op1_no_bwd(&Decode(dtype)) {
            Ok(t) => return Ok(t),
            Err(e) => {
                if KERNEL_FAILED.set(()).is_ok() {
                    tracing::warn!("fp8 decode kernel unavailable, using the lookup table: {e}");
                }
            }
        }
    }
    let bits = w.apply_op1_no_bwd(&Bits)?;
    let table = table(w.device(), dtype)?;
    table
        .index_select(&bits.flatten_all()?, 0)?
        .reshape(w.shape())
}

/// Set once the NVRTC decode kernel failed on this process's card.
static KERNEL_FAILED: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// The decode kernels' PTX for `arch`, compiled once per architecture.
fn decode_ptx(arch: &'static str) -> Result<String> {
    static CACHE: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().expect("fp8 PTX cache lock");
    if let Some((_, p)) = cache.iter().find(|(a, _)| *a == arch) {
        return Ok(p.clone());
    }
    let opts = CompileOptions {
        arch: Some(arch),
        ..Default::default()
    };
    let p = compile_ptx_with_opts(include_str!("fp8_decode.cu"), opts)
        .map_err(|e| {
            candle_core::Error::Msg(format!("NVRTC compiling fp8_decode.cu for {arch}: {e:?}"))
        })?
        .to_src();
    cache.push((arch, p.clone()));
    Ok(p)
}

/// An F8E4M3 tensor decoded to the dtype it carries, in one kernel.
struct Decode(DType);

impl CustomOp1 for Decode {
    fn name(&self) -> &'static str {
        "fp8-decode"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("fp8-decode is for CUDA tensors (the CPU casts fp8 itself)")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("fp8-decode needs a contiguous tensor");
        };
        let dev = &s.device;
        let (major, minor) = dev.cuda_stream().context().compute_capability().w()?;
        // Plain integer and float code: any architecture NVRTC targets will do.
        let arch = super::flash_cuda::arch_for(major, minor).unwrap_or("sm_75");
        let name = match self.0 {
            DType::BF16 => "baton_fp8_to_bf16",
            DType::F16 => "baton_fp8_to_f16",
            DType::F32 => "baton_fp8_to_f32",
            other => candle_core::bail!("fp8-decode to {other:?}"),
        };
        let func = dev.get_or_load_custom_func(name, "baton_fp8_decode", &decode_ptx(arch)?)?;
        let src = float8::F8E4M3::as_cuda_slice(s)?.slice(start..end);
        let n = end - start;
        let count = n as u64;
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        macro_rules! launch {
            ($t:ty) => {{
                // SAFETY: the kernel writes all n elements.
                let out = unsafe { dev.alloc::<$t>(n.max(1))? };
                let mut b = func.builder();
                b.arg(&src);
                b.arg(&out);
                b.arg(&count);
                // SAFETY: the arguments match the kernel's signature.
                unsafe { b.launch(cfg) }.w()?;
                <$t>::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = match self.0 {
            DType::BF16 => launch!(half::bf16),
            DType::F16 => launch!(half::f16),
            _ => launch!(f32),
        };
        Ok((out, l.shape().clone()))
    }
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
