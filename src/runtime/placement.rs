//! Where a model's bytes go before any is read: the residency planner.
//!
//! A pure function of the model's bytes (from its header), the dtype it
//! will be held in and the free budget, so `load_model`, `baton inspect
//! --vram` and `baton plan` ask the same question and get the same answer
//! without building a runtime. This is also the one place a model's byte
//! count is computed.

use super::error::{Result, RuntimeError};
use super::options::OffloadPolicy;
use super::size::mib;
use crate::checkpoint::{Detected, TensorEntry};
use candle_core::{DType, Device};

/// The room a load is planned into, with what the refusal messages name.
#[derive(Debug, Clone, Copy)]
pub struct Room<'a> {
    /// Budget bytes not held by any model.
    pub free: u64,
    /// The whole budget.
    pub budget: u64,
    /// What is loaded, e.g. "loaded: high: 560 MiB" (see `Ledger::summary`).
    pub loaded: &'a str,
}

impl Room<'_> {
    /// Room for one model on an empty budget of `bytes` (what `inspect` plans).
    pub fn empty(bytes: u64) -> Room<'static> {
        Room {
            free: bytes,
            budget: bytes,
            loaded: "nothing loaded",
        }
    }
}

/// How a model's blocks are split between resident and streamed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub resident_blocks: usize,
    /// Bytes left in the file and streamed at each forward.
    pub offloaded: u64,
    /// The block-sized buffers streamed blocks pass through (one, or two
    /// when the next block is read ahead).
    pub stream_buffer: u64,
    /// Streamed blocks are read one ahead (two buffers).
    pub prefetch: bool,
}

impl Plan {
    /// A model held whole: every block resident, nothing streamed.
    pub fn whole(blocks: usize) -> Self {
        Self {
            resident_blocks: blocks,
            offloaded: 0,
            stream_buffer: 0,
            prefetch: false,
        }
    }
}

/// [`plan_dit`]'s answer.
#[derive(Debug, Clone)]
pub struct DitPlan {
    /// The resident dtype.
    pub dtype: DType,
    /// Bytes of all weights in that dtype.
    pub total: u64,
    pub block_bytes: Vec<u64>,
    pub plan: Plan,
}

/// Streamed-block buffers the ledger reserves for a model that streams
/// `streamed_blocks` blocks: two while one computes and the next is read.
pub fn stream_buffers(streamed_blocks: usize, prefetch: bool) -> u64 {
    match streamed_blocks {
        0 => 0,
        1 => 1,
        _ if prefetch => 2,
        _ => 1,
    }
}

/// Where a Wan DiT's bytes would go if it were loaded into `room` in
/// `dtype` (default: the file's own, or the fp8 choice): what `load_model`
/// does and `baton inspect --vram` shows, from the header alone.
pub fn plan_dit(
    name: &str,
    detected: &Detected,
    dtype: Option<DType>,
    policy: OffloadPolicy,
    prefetch: bool,
    device: &Device,
    room: Room,
) -> Result<DitPlan> {
    let dtype = match dtype {
        Some(d) => d,
        None if detected.dtype == "fp8_e4m3" => fp8_choice(name, detected, device, room.free),
        None => crate::dtype::resident_default(&detected.dtype),
    };
    let (total, block_bytes) = dit_bytes(detected, dtype, device);
    let stem_bytes = total - block_bytes.iter().sum::<u64>();
    let plan = plan_residency(
        name,
        total,
        stem_bytes,
        &block_bytes,
        policy,
        prefetch,
        room,
    )?;
    Ok(DitPlan {
        dtype,
        total,
        block_bytes,
        plan,
    })
}

/// How an fp8 checkpoint loaded without a `dtype` is held: dequantised
/// once to bf16 when that fits the free budget whole (the faster
/// forward), else kept as fp8 on the device and dequantised per layer at
/// forward time, which nearly halves what has to be resident or streamed
/// (unless the file's unquantised tensors, held in the compute dtype,
/// make fp8 the larger: then bf16 and streaming).
pub fn fp8_choice(name: &str, detected: &Detected, device: &Device, free: u64) -> DType {
    let (bf16, _) = dit_bytes(detected, DType::BF16, device);
    let (fp8, _) = dit_bytes(detected, DType::F8E4M3, device);
    if bf16 <= free || fp8 >= bf16 {
        tracing::info!(
            "{name}: fp8 weights dequantised to bf16 at load ({} {} the {} free)",
            mib(bf16),
            if bf16 <= free {
                "fits"
            } else {
                "is no larger than fp8 held here; streams in"
            },
            mib(free)
        );
        DType::BF16
    } else {
        tracing::info!(
            "{name}: fp8 weights kept as fp8 on the device ({}), dequantised per layer \
             at forward time: bf16 would need {} of the {} free",
            mib(fp8),
            mib(bf16),
            mib(free)
        );
        DType::F8E4M3
    }
}

/// The most resident blocks that fit `room` beside the stream buffers they
/// leave; refuses when even full streaming does not fit, or when streaming
/// is not allowed and the whole model does not.
pub fn plan_residency(
    name: &str,
    total: u64,
    stem_bytes: u64,
    block_bytes: &[u64],
    policy: OffloadPolicy,
    prefetch: bool,
    room: Room,
) -> Result<Plan> {
    let free = room.free;
    if total <= free {
        return Ok(Plan::whole(block_bytes.len()));
    }
    if policy == OffloadPolicy::Never {
        return Err(RuntimeError::Budget(format!(
            "'{name}' needs {} but only {} of the {} budget is free ({}); \
             delete_model one of them first, or allow offload: \"auto\"",
            mib(total),
            mib(free),
            mib(room.budget),
            room.loaded
        )));
    }
    let block = block_bytes.iter().copied().max().unwrap_or(0);
    let n = block_bytes.len();
    // The most resident blocks that fit beside the stream buffers they
    // leave (two when reads are double-buffered); without room for the
    // second buffer, stream through one and do not read ahead.
    let fits = |prefetch: bool| {
        (0..=n).rev().find_map(|r| {
            let buffers = stream_buffers(n - r, prefetch) * block;
            let used = stem_bytes + block_bytes[..r].iter().sum::<u64>() + buffers;
            (used <= free).then_some((r, buffers))
        })
    };
    let chosen = if prefetch {
        fits(true).map(|f| (f, true))
    } else {
        None
    };
    let Some(((resident_blocks, stream_buffer), prefetch)) =
        chosen.or_else(|| fits(false).map(|f| (f, false)))
    else {
        return Err(RuntimeError::Budget(format!(
            "'{name}' cannot run even with every block offloaded: it needs {} \
             (non-block weights + one block buffer) but only {} is free ({})",
            mib(stem_bytes + block),
            mib(free),
            room.loaded
        )));
    };
    Ok(Plan {
        resident_blocks,
        offloaded: block_bytes[resident_blocks..].iter().sum(),
        stream_buffer,
        prefetch,
    })
}

/// A model that is not streamed must fit whole.
pub fn check_fits(name: &str, total: u64, room: Room) -> Result<()> {
    if total <= room.free {
        return Ok(());
    }
    Err(RuntimeError::Budget(format!(
        "'{name}' needs {} but only {} of the {} budget is free ({}); \
         delete_model one of them first",
        mib(total),
        mib(room.free),
        mib(room.budget),
        room.loaded
    )))
}

/// Bytes one tensor takes held in `dtype`: fp8 resident keeps fp8 weights
/// at 1 byte; everything else (norms, biases, scales, unquantised layers)
/// is held in the compute dtype.
fn held_bytes(e: &TensorEntry, dtype: DType, compute: DType) -> u64 {
    let per = if dtype == DType::F8E4M3 && e.dtype != safetensors::Dtype::F8_E4M3 {
        compute.size_in_bytes()
    } else {
        dtype.size_in_bytes()
    };
    (e.numel() * per) as u64
}

/// A tensor's bytes: a GGUF matrix kept as stored (quantized blocks or an
/// F16/BF16 matrix, see the DiT's and umT5's `Proj`) takes its file bytes.
fn dit_held_bytes(e: &TensorEntry, dtype: DType, compute: DType) -> u64 {
    if e.kept_as_stored() {
        e.bytes() as u64
    } else {
        held_bytes(e, dtype, compute)
    }
}

/// Bytes of a model held whole in `dtype` (text encoders, VAEs).
pub fn whole_bytes<'a>(entries: impl Iterator<Item = &'a TensorEntry>, dtype: DType) -> u64 {
    entries.map(|e| dit_held_bytes(e, dtype, dtype)).sum()
}

/// A DiT's bytes held in `dtype` on `device`, in all and per block.
pub fn dit_bytes(detected: &Detected, dtype: DType, device: &Device) -> (u64, Vec<u64>) {
    let compute = crate::models::wan::dit::compute_dtype(dtype, device);
    let bytes_in = |prefix: &str| -> u64 {
        detected
            .tensors
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| dit_held_bytes(e, dtype, compute))
            .sum()
    };
    let blocks = (0..detected.cfg.num_layers)
        .map(|i| bytes_in(&format!("blocks.{i}.")))
        .collect();
    (bytes_in(""), blocks)
}

/// Memory a load holds beyond the weights it keeps: each tensor is read
/// into a buffer of its own (no file pages are mapped), and one that needs
/// converting is held in both dtypes until the conversion is done.
pub fn read_transient<'a>(entries: impl Iterator<Item = &'a TensorEntry>, resident: DType) -> u64 {
    entries
        .filter(|e| !crate::dtype::same_storage(e.dtype, resident))
        .map(|e| e.bytes() as u64)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(free: u64, blocks: &[u64], prefetch: bool) -> Result<Plan> {
        let total = 10 + blocks.iter().sum::<u64>();
        let room = Room {
            free,
            budget: free,
            loaded: "nothing loaded",
        };
        plan_residency("m", total, 10, blocks, OffloadPolicy::Auto, prefetch, room)
    }

    #[test]
    fn whole_when_it_fits() {
        let p = plan(100, &[20, 20, 20], true).unwrap();
        assert_eq!((p.resident_blocks, p.offloaded, p.stream_buffer), (3, 0, 0));
    }

    #[test]
    fn streams_the_tail_with_two_buffers_when_reading_ahead() {
        // stem 10 + 1 block 20 + two buffers 40 = 70 <= 70.
        let p = plan(70, &[20, 20, 20, 20], true).unwrap();
        assert_eq!(
            (p.resident_blocks, p.offloaded, p.stream_buffer),
            (1, 60, 40)
        );
        assert!(p.prefetch);
    }

    #[test]
    fn falls_back_to_one_buffer_then_refuses() {
        let p = plan(30, &[20, 20, 20], true).unwrap();
        assert_eq!(
            (p.resident_blocks, p.stream_buffer, p.prefetch),
            (0, 20, false)
        );
        let e = plan(29, &[20, 20, 20], true).unwrap_err().to_string();
        assert!(
            e.contains("cannot run even with every block offloaded"),
            "{e}"
        );
    }

    #[test]
    fn never_refuses_what_does_not_fit_whole() {
        let room = Room::empty(50);
        let e = plan_residency("m", 70, 10, &[20, 20, 20], OffloadPolicy::Never, true, room);
        assert!(e.unwrap_err().to_string().contains("allow offload"));
    }
}
