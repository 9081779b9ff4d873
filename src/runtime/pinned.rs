//! Streaming offloaded blocks to a CUDA card from pinned host memory.
//!
//! On the CPU a streamed block is re-read from the checkpoint at every
//! forward (`residency`). On a card that would put a file read, a dequant and
//! a pageable copy on the critical path of every step, so here the offloaded
//! blocks are read once, at load, into page-locked host memory (plain
//! `cuMemHostAlloc`, not write-combined: the CPU fills and may re-fill these
//! buffers, and write-combined memory is very slow to read back). Each forward
//! then copies block i+1 on a dedicated copy stream while block i computes on
//! the device's own stream; an event recorded after the copy is waited on by
//! the compute stream before the block is built, so the copy engine and the
//! SMs overlap and never race.
//!
//! The pinned bytes are host memory and the ledger counts them as such
//! (`Entry::pinned`); the two block-sized device buffers in flight are the
//! stream buffers it already reserves.

use crate::checkpoint::source::expect_shape;
use crate::models::wan::dit::WanBlock;
use crate::models::wan::WanConfig;
use candle_core::cuda::cudarc::driver::{CudaEvent, CudaStream, PinnedHostSlice};
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{DType, Device, Result, Shape, Storage, Tensor};
use candle_nn::var_builder::{SimpleBackend, VarBuilder};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One tensor's bytes in page-locked host memory.
struct PinnedTensor {
    host: PinnedHostSlice<u8>,
    dtype: DType,
    shape: Vec<usize>,
}

/// The offloaded blocks of one model, pinned, and the stream they travel on.
pub struct PinnedBlocks {
    dev: CudaDevice,
    device: Device,
    copy: Arc<CudaStream>,
    /// By block index; `None` for resident blocks. Keys are full tensor names
    /// (`blocks.7.ffn.0.weight`).
    blocks: Vec<Option<HashMap<String, PinnedTensor>>>,
    bytes: u64,
    dtype: DType,
    /// The checkpoint, for error messages.
    path: PathBuf,
}

/// A block's tensors on their way to the card: usable once `ready` has
/// been waited on by the compute stream.
pub struct Upload {
    tensors: HashMap<String, Tensor>,
    ready: CudaEvent,
    pub bytes: u64,
}

fn cuda_err(what: &str, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what}: {e}"))
}

impl PinnedBlocks {
    /// Reads the blocks in `streamed` (through `source_vb`, a CPU builder
    /// over the checkpoint at the model root, LoRAs applied) into pinned
    /// memory, one block at a time. The tensors pinned are exactly the ones
    /// the block asks for, in the dtype it asks for them.
    pub fn build(
        cfg: &WanConfig,
        path: &Path,
        source_vb: &VarBuilder<'static>,
        streamed: &[usize],
        num_blocks: usize,
        device: &Device,
    ) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            candle_core::bail!("pinned streaming needs a CUDA device");
        };
        let copy = dev
            .cuda_stream()
            .context()
            .new_stream()
            .map_err(|e| cuda_err("creating the copy stream", e))?;
        let ctx = dev.cuda_stream().context().clone();
        let mut blocks: Vec<Option<HashMap<String, PinnedTensor>>> =
            (0..num_blocks).map(|_| None).collect();
        let mut bytes = 0u64;
        for &i in streamed {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let recorder = Recorder {
                inner: source_vb.clone(),
                seen: seen.clone(),
                path: path.to_path_buf(),
            };
            let vb = VarBuilder::from_backend(Box::new(recorder), source_vb.dtype(), Device::Cpu);
            drop(WanBlock::new(cfg, vb.pp("blocks").pp(i))?);
            let seen = std::mem::take(&mut *seen.lock().expect("recorder lock"));
            let mut map = HashMap::new();
            for (name, t) in seen {
                let data = safetensors::View::data(&t);
                // SAFETY: filled completely by the copy below before any read.
                let mut host = unsafe { ctx.alloc_pinned_with_flags::<u8>(data.len().max(1), 0) }
                    .map_err(|e| cuda_err("allocating pinned host memory", e))?;
                host.as_mut_slice()
                    .map_err(|e| cuda_err("pinned host memory", e))?[..data.len()]
                    .copy_from_slice(&data);
                bytes += data.len() as u64;
                map.insert(
                    name,
                    PinnedTensor {
                        host,
                        dtype: t.dtype(),
                        shape: t.dims().to_vec(),
                    },
                );
            }
            blocks[i] = Some(map);
        }
        Ok(Self {
            dev: dev.clone(),
            device: device.clone(),
            copy,
            blocks,
            bytes,
            dtype: source_vb.dtype(),
            path: path.to_path_buf(),
        })
    }

    /// Page-locked host bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Queues block `i`'s copy on the copy stream and returns at once.
    pub fn upload(&self, i: usize) -> Result<Upload> {
        let Some(Some(block)) = self.blocks.get(i) else {
            candle_core::bail!("block {i} is not pinned");
        };
        let mut tensors = HashMap::with_capacity(block.len());
        let mut bytes = 0u64;
        for (name, p) in block {
            let n: usize = p.shape.iter().product();
            let storage = match p.dtype {
                DType::F32 => self.copy_typed::<f32>(p, n)?,
                DType::BF16 => self.copy_typed::<half::bf16>(p, n)?,
                DType::F16 => self.copy_typed::<half::f16>(p, n)?,
                DType::F8E4M3 => self.copy_typed::<float8::F8E4M3>(p, n)?,
                other => candle_core::bail!("cannot stream a {other:?} tensor ('{name}')"),
            };
            bytes += (n * p.dtype.size_in_bytes()) as u64;
            let t = Tensor::from_storage(
                Storage::Cuda(storage),
                Shape::from(p.shape.clone()),
                candle_core::op::BackpropOp::none(),
                false,
            );
            tensors.insert(name.clone(), t);
        }
        let ready = self
            .copy
            .record_event(None)
            .map_err(|e| cuda_err("recording the copy event", e))?;
        Ok(Upload {
            tensors,
            ready,
            bytes,
        })
    }

    fn copy_typed<T: CudaDType + candle_core::cuda::cudarc::driver::DeviceRepr>(
        &self,
        p: &PinnedTensor,
        n: usize,
    ) -> Result<CudaStorage> {
        let size = n * std::mem::size_of::<T>();
        // SAFETY: every byte is written by the copy queued right after, on
        // the same stream, before anything can read it.
        let mut dst = unsafe { self.copy.alloc::<T>(n) }
            .map_err(|e| cuda_err("allocating a stream buffer on the card", e))?;
        {
            // SAFETY: a byte view of exactly the slice's own allocation.
            let mut view = unsafe { dst.transmute_mut::<u8>(size) }
                .ok_or_else(|| cuda_err("stream buffer", "smaller than its tensor"))?;
            self.copy
                .memcpy_htod(&p.host, &mut view)
                .map_err(|e| cuda_err("copying a block to the card", e))?;
        }
        Ok(T::wrap_cuda_slice(dst, self.dev.clone()))
    }

    /// Makes the compute stream wait for `up`'s copy, then builds the block.
    pub fn block(&self, cfg: &WanConfig, i: usize, up: Upload) -> Result<WanBlock> {
        self.dev
            .cuda_stream()
            .wait(&up.ready)
            .map_err(|e| cuda_err("ordering the copy before the block", e))?;
        let vb = VarBuilder::from_backend(
            Box::new(Replay {
                tensors: up.tensors,
                path: self.path.clone(),
            }),
            self.dtype,
            self.device.clone(),
        );
        WanBlock::new(cfg, vb.pp("blocks").pp(i))
    }
}

/// Serves a block's uploaded tensors as they were recorded. A request in
/// fp8 means "as the file holds it" (fp8 weights stay fp8, the rest comes
/// in a compute dtype), so it is never converted; other requests are.
struct Replay {
    tensors: HashMap<String, Tensor>,
    path: PathBuf,
}

impl SimpleBackend for Replay {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        expect_shape(&self.path, name, self.get_unchecked(name, dtype, dev)?, &s)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: streamed block has no tensor '{name}'",
                self.path.display()
            ))
        })?;
        if dtype == DType::F8E4M3 || t.dtype() == dtype {
            Ok(t.clone())
        } else {
            t.to_dtype(dtype)
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// A `VarBuilder` backend that serves tensors from another builder and keeps
/// a copy of each one served: what a block asks for is what gets pinned.
struct Recorder {
    inner: VarBuilder<'static>,
    seen: Arc<Mutex<Vec<(String, Tensor)>>>,
    path: PathBuf,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        expect_shape(&self.path, name, self.get_unchecked(name, dtype, dev)?, &s)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> Result<Tensor> {
        let t = self.inner.get_unchecked_dtype(name, dtype)?;
        self.seen
            .lock()
            .expect("recorder lock")
            .push((name.to_string(), t.clone()));
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// Host-to-device bandwidth from pinned memory on a dedicated stream, in
/// GB/s: the ceiling streamed blocks can reach (`baton bench device`).
pub fn h2d_gbps(device: &Device, bytes: usize, repeats: usize) -> Result<f64> {
    let Device::Cuda(dev) = device else {
        candle_core::bail!("host-to-device bandwidth needs a CUDA device");
    };
    let ctx = dev.cuda_stream().context().clone();
    let stream = ctx
        .new_stream()
        .map_err(|e| cuda_err("creating a stream", e))?;
    // SAFETY: the contents are never read as anything but bytes.
    let host = unsafe { ctx.alloc_pinned_with_flags::<u8>(bytes, 0) }
        .map_err(|e| cuda_err("allocating pinned host memory", e))?;
    // SAFETY: as above; the copies below write every byte.
    let mut dst = unsafe { stream.alloc::<u8>(bytes) }
        .map_err(|e| cuda_err("allocating device memory", e))?;
    let mut best = 0f64;
    for _ in 0..repeats.max(1) + 1 {
        let t0 = std::time::Instant::now();
        stream
            .memcpy_htod(&host, &mut dst)
            .and_then(|_| stream.synchronize())
            .map_err(|e| cuda_err("copying to the card", e))?;
        best = best.max(bytes as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    Ok(best)
}
