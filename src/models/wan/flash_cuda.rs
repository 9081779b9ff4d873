//! Fused attention on a CUDA card: the kernel of `flash_attn.cu` (online
//! softmax, tensor cores, no score matrix), compiled by NVRTC for the card
//! at first use, so the build needs no nvcc for it and no architecture list.
//!
//! It takes bf16 and f16 at head dims 64 and 128 on sm_80 and newer; any
//! other case, or a card where NVRTC or the kernel fails, goes to the
//! query-chunked path, the reference (a failure is logged once).
//! `BATON_ATTENTION=chunked` forces the reference, for comparisons.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda::{CudaDType, CudaStorage, WrapErr};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::sync::{Mutex, OnceLock};

const SOURCE: &str = include_str!("flash_attn.cu");
const MODULE: &str = "baton_flash";
/// Query rows per thread block and threads per block (`BM`, `WARPS * 32`).
const ROWS: usize = 64;
const THREADS: u32 = 128;

/// Whether the fused kernel takes attention in `dtype` at `head_dim` on
/// `dev`.
pub fn takes(dtype: DType, head_dim: usize, dev: &candle_core::Device) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
        && matches!(head_dim, 64 | 128)
        && dev.is_cuda()
        && std::env::var("BATON_ATTENTION").map_or(true, |v| v != "chunked")
        && DISABLED.get().is_none()
}

/// Set when the kernel failed once on this process's card: the reason.
static DISABLED: OnceLock<String> = OnceLock::new();

/// softmax(q k^T / sqrt(d)) v; q [B, H, Sq, d], k/v [B, H, Sk, d]
/// (contiguous, bf16 or f16). Returns [B, Sq, H * d], or `None` when the
/// kernel cannot run here (the caller takes the chunked path).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Option<Tensor> {
    let run = || -> Result<Tensor> {
        let (b, h, sq, d) = q.dims4()?;
        let out = q.apply_op3_no_bwd(k, v, &Flash)?;
        out.reshape((b, sq, h * d))
    };
    match run() {
        Ok(t) => Some(t),
        Err(e) => {
            let why = format!("{e}");
            if DISABLED.set(why.clone()).is_ok() {
                tracing::warn!("fused attention unavailable, using the chunked path: {why}");
            }
            None
        }
    }
}

/// PTX for the card's architecture, compiled once per architecture.
fn ptx(arch: &'static str) -> Result<String> {
    static CACHE: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().expect("flash PTX cache lock");
    if let Some((_, p)) = cache.iter().find(|(a, _)| *a == arch) {
        return Ok(p.clone());
    }
    let opts = CompileOptions {
        arch: Some(arch),
        ..Default::default()
    };
    let p = compile_ptx_with_opts(SOURCE, opts)
        .map_err(|e| {
            candle_core::Error::Msg(format!("NVRTC compiling flash_attn.cu for {arch}: {e:?}"))
        })?
        .to_src();
    cache.push((arch, p.clone()));
    Ok(p)
}

/// The NVRTC architecture of a compute capability, `None` before sm_80
/// (no bf16 tensor-core mma).
pub fn arch_for(major: i32, minor: i32) -> Option<&'static str> {
    Some(match (major, minor) {
        (8, 0) => "sm_80",
        (8, 6) => "sm_86",
        (8, 7) => "sm_87",
        (8, 9) => "sm_89",
        (9, 0) => "sm_90",
        (10, 0) => "sm_100",
        (12, 0) => "sm_120",
        (8, _) => "sm_80",
        (9..=12, _) => "sm_90",
        _ => return None,
    })
}

struct Flash;

impl CustomOp3 for Flash {
    fn name(&self) -> &'static str {
        "baton-flash-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("the CUDA flash kernel got CPU tensors (the CPU has models::wan::flash)")
    }

    fn cuda_fwd(
        &self,
        qs: &CudaStorage,
        ql: &Layout,
        ks: &CudaStorage,
        kl: &Layout,
        vs: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, h, sq, d) = ql.shape().dims4()?;
        let (kb, kh, sk, kd) = kl.shape().dims4()?;
        if (kb, kh, kd) != (b, h, d) || vl.shape() != kl.shape() {
            candle_core::bail!(
                "flash attention: q {:?} with k {:?} and v {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        let offsets = |l: &Layout, what: &str| -> Result<usize> {
            match l.contiguous_offsets() {
                // 32-bit loads of value pairs need an even start.
                Some((start, _)) if start % 2 == 0 => Ok(start),
                _ => candle_core::bail!(
                    "flash attention: {what} is not contiguous from an even offset"
                ),
            }
        };
        let (q0, k0, v0) = (offsets(ql, "q")?, offsets(kl, "k")?, offsets(vl, "v")?);
        let dev = &qs.device;
        let (major, minor) = dev.cuda_stream().context().compute_capability().w()?;
        let Some(arch) = arch_for(major, minor) else {
            candle_core::bail!(
                "flash attention needs sm_80 or newer, the card is sm_{major}{minor}"
            );
        };
        let bf16 = match qs.dtype() {
            DType::BF16 => true,
            DType::F16 => false,
            other => candle_core::bail!("flash attention takes bf16 or f16, not {other:?}"),
        };
        let name = format!("baton_flash_{}_d{d}", if bf16 { "bf16" } else { "f16" });
        let func = dev.get_or_load_custom_func(&name, MODULE, &ptx(arch)?)?;
        let cfg = LaunchConfig {
            grid_dim: (sq.div_ceil(ROWS) as u32, (b * h) as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (hh, sqq, skk) = (h as i32, sq as i32, sk as i32);
        let scale_log2 = std::f32::consts::LOG2_E / (d as f32).sqrt();
        let n = b * sq * h * d;
        macro_rules! launch {
            ($t:ty) => {{
                let q = qs.as_cuda_slice::<$t>()?.slice(q0..);
                let k = ks.as_cuda_slice::<$t>()?.slice(k0..);
                let v = vs.as_cuda_slice::<$t>()?.slice(v0..);
                // SAFETY: the kernel writes every element of `out`.
                let out = unsafe { dev.alloc::<$t>(n)? };
                let mut builder = func.builder();
                builder.arg(&q);
                builder.arg(&k);
                builder.arg(&v);
                builder.arg(&out);
                builder.arg(&hh);
                builder.arg(&sqq);
                builder.arg(&skk);
                builder.arg(&scale_log2);
                // SAFETY: the argument list matches the kernel's signature.
                unsafe { builder.launch(cfg) }.w()?;
                <$t>::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = if bf16 {
            launch!(half::bf16)
        } else {
            launch!(half::f16)
        };
        Ok((out, Shape::from((b, sq, h, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::arch_for;

    #[test]
    fn architectures() {
        assert_eq!(arch_for(9, 0), Some("sm_90"));
        assert_eq!(arch_for(8, 9), Some("sm_89"));
        assert_eq!(arch_for(7, 5), None);
    }
}
