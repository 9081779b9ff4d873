//! Which device a session computes on, and what its driver says is free.
//!
//! `--device auto` (the default) takes the first CUDA card when baton was
//! built with the `cuda` feature and a card answers, else the CPU, and says
//! so in the log: a silent fallback would make a "why is this slow" question
//! out of what is a build or driver question.
//!
//! On CUDA the driver's free/total memory is the ground truth the ledger is
//! held against: `vram()` reports both and flags a gap (see [`leak_check`]).

use candle_core::Device;

/// Parses `auto`, `cpu`, `cuda` or `cuda:N` and opens the device.
pub fn select(spec: Option<&str>) -> Result<Device, String> {
    let spec = spec.unwrap_or("auto").trim().to_ascii_lowercase();
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(auto()),
        "cuda" | "gpu" => open_cuda(0),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => open_cuda(n),
            _ => Err(format!(
                "--device {spec}: expected auto, cpu, cuda or cuda:N (N a card number)"
            )),
        },
    }
}

/// A short name for logs and reports: `cpu`, `cuda:0`.
pub fn label(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(feature = "cuda")]
fn auto() -> Device {
    match open_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            tracing::info!("no usable CUDA card ({e}); running on the CPU");
            Device::Cpu
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn auto() -> Device {
    tracing::debug!("built without the cuda feature: running on the CPU");
    Device::Cpu
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device, String> {
    // Our own stream, not the per-thread default one: streamed blocks are
    // copied on a second stream that must order against this one by events.
    let dev = Device::new_cuda_with_stream(ordinal)
        .map_err(|e| format!("opening cuda:{ordinal}: {}", super::error::plain_error(&e)))?;
    if let Err(e) = warm_up(&dev) {
        // Not fatal: the first real forward loads what is missing (and the
        // leak check may then show it as a gap of a few MiB).
        tracing::warn!(
            "warming up cuda:{ordinal}: {}",
            super::error::plain_error(&e)
        );
    }
    if let Some(m) = driver_memory(&dev) {
        tracing::info!(
            "device cuda:{ordinal}: {} free of {}",
            super::size::mib(m.free),
            super::size::mib(m.total)
        );
    }
    Ok(dev)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device, String> {
    Err(
        "this baton was built without CUDA support; rebuild it with \
         `cargo build --release --features cuda` (see the README's GPU section)"
            .into(),
    )
}

/// Runs one of each kernel family a forward uses, so the modules the driver
/// loads on first use (and cuBLAS's workspace) are in place before the
/// session's memory baseline is taken; otherwise they would read as a leak.
/// A step that fails is logged and skipped: the forward that needs it will
/// report the error where it matters.
#[cfg(feature = "cuda")]
fn warm_up(dev: &Device) -> candle_core::Result<()> {
    use candle_core::{DType, Tensor, D};
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let step = || -> candle_core::Result<()> {
            let a = Tensor::ones((64, 64), dtype, dev)?;
            let b = (a.matmul(&a.t()?)? * 0.5)?;
            let s = candle_nn::ops::softmax_last_dim(&b.exp()?)?;
            let c = Tensor::cat(&[&s, &s], 0)?.narrow(0, 1, 64)?.contiguous()?;
            let _ = c.sum_keepdim(D::Minus1)?.sqrt()?.broadcast_add(&c)?;
            let _ = c.ge(&c)?.where_cond(&c, &c)?;
            let _ = c.to_dtype(DType::F32)?.to_dtype(dtype)?;
            Ok(())
        };
        if let Err(e) = step() {
            tracing::warn!("warm-up in {dtype:?}: {}", super::error::plain_error(&e));
        }
    }
    let fp8 = || -> candle_core::Result<()> {
        let q = Tensor::ones(64, DType::F32, &Device::Cpu)?
            .to_dtype(DType::F8E4M3)?
            .to_device(dev)?;
        let w = crate::models::wan::fp8_cuda::widen(&q, DType::BF16)?;
        let sum = w.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        if sum != 64.0 {
            candle_core::bail!("fp8 decode gave a sum of {sum}, not 64");
        }
        Ok(())
    };
    if let Err(e) = fp8() {
        tracing::warn!("warm-up of fp8 casts: {}", super::error::plain_error(&e));
    }
    dev.synchronize()
}

/// The driver's view of the card's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverMemory {
    pub free: u64,
    pub total: u64,
}

impl DriverMemory {
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.free)
    }
}

/// The card's free and total memory after the device's queued work is done
/// (freed blocks return to the driver only at a synchronisation), or `None`
/// on the CPU.
#[cfg(feature = "cuda")]
pub fn driver_memory(dev: &Device) -> Option<DriverMemory> {
    let Device::Cuda(cuda) = dev else {
        return None;
    };
    let stream = cuda.cuda_stream();
    // The whole context, not one stream: blocks freed on the copy stream
    // go back to the driver only once that stream has caught up too.
    if let Err(e) = stream.context().synchronize() {
        tracing::warn!("synchronising the device before reading its memory: {e}");
    }
    match stream.context().mem_get_info() {
        Ok((free, total)) => Some(DriverMemory {
            free: free as u64,
            total: total as u64,
        }),
        Err(e) => {
            tracing::warn!("asking the driver for free memory: {e}");
            None
        }
    }
}

#[cfg(not(feature = "cuda"))]
pub fn driver_memory(_dev: &Device) -> Option<DriverMemory> {
    None
}

/// Driver memory without waiting for queued work: for a sampler thread that
/// polls while a forward runs (the peak it sees is the allocator's real one).
#[cfg(feature = "cuda")]
pub fn driver_memory_now(dev: &Device) -> Option<DriverMemory> {
    let Device::Cuda(cuda) = dev else {
        return None;
    };
    let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
    Some(DriverMemory {
        free: free as u64,
        total: total as u64,
    })
}

#[cfg(not(feature = "cuda"))]
pub fn driver_memory_now(_dev: &Device) -> Option<DriverMemory> {
    None
}

/// What the driver says this session holds against what the ledger says.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakCheck {
    /// Driver-used bytes above the session's baseline (taken at start, after
    /// the warm-up kernels).
    pub driver_held: u64,
    /// Bytes the ledger counts on the device.
    pub ledger: u64,
    /// `driver_held - ledger`, negative when the driver shows less.
    pub gap: i64,
    /// The gap is more than 5% of the larger of the two figures (and more
    /// than the slack for allocator granularity).
    pub leak: bool,
}

/// Allocator rounding and small per-session buffers (RoPE tables, the
/// latent) that the ledger does not count: below this no gap is a leak.
pub const LEAK_SLACK: u64 = 64 << 20;

/// Compares the driver's used memory with the ledger's count. A gap over 5%
/// means memory the ledger does not know about (or counts but never got):
/// either way `vram()` would be lying, so it is flagged.
pub fn leak_check(baseline_used: u64, now: DriverMemory, ledger: u64) -> LeakCheck {
    let driver_held = now.used().saturating_sub(baseline_used);
    let gap = driver_held as i64 - ledger as i64;
    let scale = driver_held.max(ledger) as f64;
    let leak = gap.unsigned_abs() > LEAK_SLACK && gap.unsigned_abs() as f64 > 0.05 * scale;
    LeakCheck {
        driver_held,
        ledger,
        gap,
        leak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse() {
        assert!(matches!(select(Some("cpu")), Ok(Device::Cpu)));
        assert!(matches!(select(Some(" CPU ")), Ok(Device::Cpu)));
        let err = select(Some("tpu:0")).unwrap_err();
        assert!(err.contains("expected auto, cpu, cuda or cuda:N"), "{err}");
        let err = select(Some("cuda:x")).unwrap_err();
        assert!(err.contains("cuda:N"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let err = select(Some("cuda:0")).unwrap_err();
        assert!(err.contains("--features cuda"), "{err}");
        assert!(matches!(select(Some("auto")), Ok(Device::Cpu)));
    }

    #[test]
    fn leak_flag_needs_both_five_percent_and_the_slack() {
        let gib = 1u64 << 30;
        let m = |used: u64| DriverMemory {
            free: 80 * gib - used,
            total: 80 * gib,
        };
        // 14 GiB loaded, driver shows 14 GiB + 100 MiB: under 5%.
        let ok = leak_check(gib, m(gib + 14 * gib + (100 << 20)), 14 * gib);
        assert!(!ok.leak, "{ok:?}");
        assert_eq!(ok.gap, 100 << 20);
        // Deleted (ledger 0) but the driver still holds 2 GiB: a leak.
        let bad = leak_check(gib, m(3 * gib), 0);
        assert!(bad.leak && bad.gap == 2 * gib as i64, "{bad:?}");
        // Ledger counts 10 GiB the driver never gave out: flagged too.
        let phantom = leak_check(gib, m(gib), 10 * gib);
        assert!(phantom.leak && phantom.gap < 0, "{phantom:?}");
        // A small model: 40 MiB gap is over 5% but under the slack.
        let small = leak_check(0, m(140 << 20), 100 << 20);
        assert!(!small.leak, "{small:?}");
    }
}
