//! Tensors straight from a memory-mapped checkpoint, under canonical names.
//!
//! The mapping stays open only while a model streams blocks from it. Pages we
//! have copied out are handed back with `MADV_DONTNEED`, so file-backed pages
//! do not linger in the process's RSS and `ram()` stays honest.

use super::{CheckpointError, Header, TensorEntry};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::{SimpleBackend, VarBuilder};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct CheckpointSource {
    /// What the user named (a file, an index json or a folder of shards).
    path: PathBuf,
    /// One mapping per file of `header.files`; entries index it.
    maps: Vec<Mmap>,
    /// The same files, for reading tensors with `pread`.
    files: Vec<std::fs::File>,
    tensors: BTreeMap<String, TensorEntry>,
    /// On a card: pinned buffers that overlap file reads with copies while
    /// a model loads (see `upload_cuda`); dropped by `finish_uploads`.
    #[cfg(feature = "cuda")]
    uploader: std::sync::Mutex<Option<super::upload_cuda::Uploader>>,
}

impl CheckpointSource {
    /// Maps every file of `header` and serves `tensors` (entries of that
    /// header, possibly renamed) from them.
    pub fn open(
        header: &Header,
        tensors: BTreeMap<String, TensorEntry>,
    ) -> Result<Arc<Self>, CheckpointError> {
        let mut maps = Vec::with_capacity(header.files.len());
        let mut files = Vec::with_capacity(header.files.len());
        for path in &header.files {
            let io = |source| CheckpointError::Io {
                path: path.clone(),
                source,
            };
            let file = std::fs::File::open(path).map_err(io)?;
            // SAFETY: the file is opened read-only; a concurrent writer truncating it
            // would be a user error we cannot guard against (as for every mmap reader).
            maps.push(unsafe { Mmap::map(&file) }.map_err(io)?);
            files.push(file);
        }
        for (k, e) in &tensors {
            let Some(map) = maps.get(e.file) else {
                return Err(CheckpointError::Corrupt {
                    path: header.path.clone(),
                    reason: format!("tensor '{k}' names file #{} of {}", e.file, maps.len()),
                });
            };
            if e.end > map.len() {
                return Err(CheckpointError::Corrupt {
                    path: header.files[e.file].clone(),
                    reason: format!(
                        "tensor '{k}' ends at byte {} past the end of the file (it shrank?)",
                        e.end
                    ),
                });
            }
        }
        Ok(Arc::new(Self {
            path: header.path.clone(),
            maps,
            files,
            tensors,
            #[cfg(feature = "cuda")]
            uploader: std::sync::Mutex::new(None),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor under its canonical name, from the header.
    pub fn entries(&self) -> &BTreeMap<String, TensorEntry> {
        &self.tensors
    }

    /// Copies one tensor out of the mapping, converted to `dtype`.
    pub fn tensor(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let e = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: missing tensor '{name}'", self.path.display()))
        })?;
        if let Some(ty) = e.quantized() {
            let bytes = &self.maps[e.file][e.start..e.end];
            let t = super::qblocks::dequantize(&self.path, name, bytes, ty, &e.shape)?;
            let t = if dtype == DType::F8E4M3 {
                t
            } else {
                t.to_dtype(dtype)?
            };
            return if dev.is_cpu() {
                Ok(t)
            } else {
                t.to_device(dev)
            };
        }
        let file_dtype = match e.dtype {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F8_E4M3 => DType::F8E4M3,
            other => candle_core::bail!(
                "{}: tensor '{name}' has unsupported dtype {other:?}",
                self.path.display()
            ),
        };
        // On a card, a tensor kept in its file dtype goes from the file to the
        // card through pinned buffers, the read overlapping the copy.
        #[cfg(feature = "cuda")]
        if let Device::Cuda(card) = dev {
            if dtype == file_dtype && e.bytes() == e.numel() * file_dtype.size_in_bytes() {
                return self.upload(name, e, file_dtype, card);
            }
        }
        let t = self.read(name, e, file_dtype)?;
        // fp8 resident (`dtype: "fp8"`): fp8 weights stay as they are (the
        // model dequantises per layer at forward time, with the scale it
        // reads beside them); everything else comes in the compute dtype.
        let dtype = if dtype == DType::F8E4M3 {
            if file_dtype == DType::F8E4M3 {
                return if dev.is_cpu() {
                    Ok(t)
                } else {
                    t.to_device(dev)
                };
            }
            crate::models::wan::dit::compute_dtype(DType::F8E4M3, dev)
        } else {
            dtype
        };
        let (t, file_dtype) = if file_dtype == DType::F8E4M3 {
            (self.dequantise(name, t)?, DType::F32)
        } else {
            (t, file_dtype)
        };
        let t = if file_dtype == dtype {
            t
        } else {
            t.to_dtype(dtype)?
        };
        if dev.is_cpu() {
            Ok(t)
        } else {
            t.to_device(dev)
        }
    }

    /// One tensor in its file dtype, from the file to `card` (see `upload_cuda`).
    #[cfg(feature = "cuda")]
    fn upload(
        &self,
        name: &str,
        e: &TensorEntry,
        dtype: DType,
        card: &candle_core::cuda::CudaDevice,
    ) -> candle_core::Result<Tensor> {
        let mut slot = self
            .uploader
            .lock()
            .map_err(|_| candle_core::Error::Msg("the load uploader's lock is poisoned".into()))?;
        if slot.is_none() {
            *slot = Some(super::upload_cuda::Uploader::new(card)?);
        }
        let what = |source: std::io::Error| {
            candle_core::Error::Msg(format!(
                "{}: reading tensor '{name}' (file shorter than its header says?): {source}",
                self.path.display()
            ))
        };
        match slot.as_mut() {
            Some(u) => u.read(&self.files[e.file], e.start as u64, dtype, &e.shape, &what),
            None => candle_core::bail!("no load uploader"),
        }
    }

    /// Frees the pinned load buffers once a model's weights are read (a
    /// no-op without a card); a later read on a card makes new ones.
    pub fn finish_uploads(&self) {
        #[cfg(feature = "cuda")]
        if let Ok(mut u) = self.uploader.lock() {
            u.take();
        }
    }

    /// One tensor in its file dtype. Kept as stored, its buffer is a private
    /// mapping of the file (no copy; see `mapped`) where the binary allows
    /// it; otherwise it is read with `pread` straight into the tensor's own
    /// buffer: one copy from the page cache. Half floats are read as their
    /// bits and reinterpreted; others go through a byte buffer.
    fn read(&self, name: &str, e: &TensorEntry, dtype: DType) -> candle_core::Result<Tensor> {
        let n = e.numel();
        let file = &self.files[e.file];
        let err = |source: std::io::Error| {
            candle_core::Error::Msg(format!(
                "{}: reading tensor '{name}' (file shorter than its header says?): {source}",
                self.path.display()
            ))
        };
        if cfg!(target_endian = "little") && e.bytes() == 2 * n {
            let half = matches!(dtype, DType::BF16 | DType::F16);
            let bits: Vec<u16> = load_vec(file, e.start as u64, n, half).map_err(err)?;
            return match dtype {
                DType::BF16 => Tensor::from_vec(
                    half::vec::HalfBitsVecExt::reinterpret_into::<half::bf16>(bits),
                    e.shape.as_slice(),
                    &Device::Cpu,
                ),
                DType::F16 => Tensor::from_vec(
                    half::vec::HalfBitsVecExt::reinterpret_into::<half::f16>(bits),
                    e.shape.as_slice(),
                    &Device::Cpu,
                ),
                _ => Tensor::from_raw_buffer(
                    // SAFETY: a u16 buffer viewed as its bytes: same
                    // allocation, alignment 1, read-only.
                    unsafe { std::slice::from_raw_parts(bits.as_ptr().cast::<u8>(), 2 * n) },
                    dtype,
                    &e.shape,
                    &Device::Cpu,
                ),
            };
        }
        if cfg!(target_endian = "little") && dtype == DType::F32 && e.bytes() == 4 * n {
            let v: Vec<f32> = load_vec(file, e.start as u64, n, true).map_err(err)?;
            return Tensor::from_vec(v, e.shape.as_slice(), &Device::Cpu);
        }
        let bytes = &self.maps[e.file][e.start..e.end];
        Tensor::from_raw_buffer(bytes, dtype, &e.shape, &Device::Cpu)
    }

    /// An fp8 weight in f32: times its per-tensor (or per-output-channel)
    /// scale when the file is fp8_scaled, as ComfyUI stores it either as
    /// `<layer>.scale_weight` (legacy) or `<layer>.weight_scale`; plain fp8
    /// (no scale) is taken as is. The caller rounds once to the resident dtype.
    fn dequantise(&self, name: &str, q: Tensor) -> candle_core::Result<Tensor> {
        let w = q.to_dtype(DType::F32)?;
        let Some(stem) = name.strip_suffix(".weight") else {
            return Ok(w);
        };
        let scale_key = [
            format!("{stem}.scale_weight"),
            format!("{stem}.weight_scale"),
        ]
        .into_iter()
        .find(|k| self.tensors.contains_key(k));
        let Some(key) = scale_key else {
            return Ok(w);
        };
        let s = self.tensor(&key, DType::F32, &Device::Cpu)?.flatten_all()?;
        let out = w.dims().first().copied().unwrap_or(0);
        match s.elem_count() {
            1 => w.broadcast_mul(&s.reshape(())?),
            n if n == out => {
                let mut shape = vec![1; w.rank()];
                shape[0] = n;
                w.broadcast_mul(&s.reshape(shape)?)
            }
            n => candle_core::bail!(
                "{}: '{key}' has {n} values; an fp8 scale for '{name}' {:?} must have 1 or {out}",
                self.path.display(),
                w.dims()
            ),
        }
    }

    /// Whether `name` is a GGUF matrix a DiT keeps as stored.
    pub fn kept_as_stored(&self, name: &str) -> bool {
        self.tensors.get(name).is_some_and(|e| e.kept_as_stored())
    }

    /// The packed form of a GGUF matrix kept as stored (see `qblocks`).
    pub fn packed(&self, name: &str) -> candle_core::Result<Tensor> {
        let e = self.tensors.get(name).filter(|e| e.kept_as_stored());
        let e = e.ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: tensor '{name}' is not a GGUF matrix kept as stored",
                self.path.display()
            ))
        })?;
        super::qblocks::packed(&self.maps[e.file][e.start..e.end], e)
    }

    /// The raw bytes of a U8 tensor (an embedded file such as a SentencePiece model).
    pub fn bytes(&self, name: &str) -> Result<&[u8], String> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| format!("{}: missing tensor '{name}'", self.path.display()))?;
        if e.dtype != safetensors::Dtype::U8 {
            return Err(format!(
                "{}: tensor '{name}' holds {:?}, not the bytes of a file (U8)",
                self.path.display(),
                e.dtype
            ));
        }
        Ok(&self.maps[e.file][e.start..e.end])
    }

    /// Checks that the tensors under `prefix` have the same names (after the
    /// prefix) and shapes as those under `template`, from the header alone.
    pub fn check_same_keys(&self, template: &str, prefix: &str) -> candle_core::Result<()> {
        let under = |p: &str| -> BTreeMap<&str, &[usize]> {
            self.tensors
                .iter()
                .filter_map(|(k, e)| Some((k.strip_prefix(p)?, e.shape.as_slice())))
                .collect()
        };
        let (want, have) = (under(template), under(prefix));
        for (suffix, shape) in &want {
            match have.get(suffix) {
                None => {
                    candle_core::bail!("{}: missing tensor '{prefix}{suffix}'", self.path.display())
                }
                Some(s) if s != shape => candle_core::bail!(
                    "{}: tensor '{prefix}{suffix}' has shape {s:?}, the model expects {shape:?}",
                    self.path.display()
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// A `VarBuilder` over this checkpoint at the model root.
    pub fn var_builder(self: &Arc<Self>, dtype: DType, dev: &Device) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(Backend(self.clone()));
        VarBuilder::from_backend(backend, dtype, dev.clone())
    }

    /// Hands the pages of every tensor under `prefix` back to the kernel.
    /// They stay in the page cache; only this process's mapping drops them.
    pub fn release(&self, prefix: &str) {
        let page = page_size();
        for e in self
            .tensors
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e)
        {
            let map = &self.maps[e.file];
            let start = e.start / page * page;
            let end = e.end.min(map.len());
            if end > start {
                // SAFETY: DONTNEED on a read-only shared file mapping only drops
                // our page-table entries; later reads fault the pages back in
                // from the file, so no data can be lost or observed changed.
                unsafe {
                    let _ = map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    );
                }
            }
        }
    }
}

use super::mapped::{page_size, Pod};

/// `n` values of `file` at `offset`: the file's own pages when `map` and
/// mapping is possible (see `mapped::map_vec`), else a fresh read.
fn load_vec<T: Pod>(
    file: &std::fs::File,
    offset: u64,
    n: usize,
    map: bool,
) -> std::io::Result<Vec<T>> {
    if map {
        if let Some(v) = super::mapped::map_vec(file, offset, n)? {
            return Ok(v);
        }
    }
    read_fresh(file, offset, n)
}

/// Tensors at least this large are read by several threads.
const PARALLEL_READ_BYTES: usize = 4 << 20;

/// `n` values read with `pread` at `offset` into a fresh buffer, which is
/// never zero-filled first (a zeroing pass costs as much as the copy).
///
/// Reading into fresh memory costs the kernel's page faults and page
/// clearing on top of the copy, which made `load_model` 0.27x a plain read
/// into a reused buffer. So the buffer asks for transparent huge pages
/// (one fault and one clear per 2 MiB instead of 512), and a large tensor
/// is split between up to four threads, each faulting in its own part with
/// one `MADV_POPULATE_WRITE` and then copying into it, so clearing and
/// copying run on every core. In a C harness of the same steps on a 980 MiB
/// file (2 cores) that took a reused region from 2.4 GB/s (4 KiB pages, one
/// thread) to 6.5 GB/s. Memory the VM's host has not backed yet costs far
/// more (0.64 GB/s on first touch there), and that is what bounds
/// `baton bench load` on the development VM at ~2.5 GB/s either way.
fn read_fresh<T: Pod>(file: &std::fs::File, offset: u64, n: usize) -> std::io::Result<Vec<T>> {
    let mut v = Vec::<T>::with_capacity(n);
    let len = n * std::mem::size_of::<T>();
    let base = v.as_mut_ptr().cast::<u8>();
    huge_pages(base, len);
    let addr = base as usize;
    super::mapped::in_page_parts(len, PARALLEL_READ_BYTES, |start, end| {
        // SAFETY: `[start, end)` lies in the buffer's spare capacity and
        // the parts are disjoint.
        unsafe {
            read_into(
                file,
                offset + start as u64,
                (addr + start) as *mut u8,
                end - start,
            )
        }
    })?;
    // SAFETY: all `len` bytes, hence all `n` values, were written, and
    // `T: Pod` makes any bytes a valid `T`.
    unsafe { v.set_len(n) };
    Ok(v)
}

/// Populates `[p, p + len)` and fills it from `file` at `offset`.
///
/// # Safety
/// `[p, p + len)` must be writable memory of ours that nothing else reads
/// or writes during the call.
unsafe fn read_into(
    file: &std::fs::File,
    offset: u64,
    p: *mut u8,
    len: usize,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    populate(p, len);
    let mut done = 0usize;
    while done < len {
        // SAFETY: `p + done .. p + len` is ours to write (the caller's
        // contract); the descriptor is open for the call.
        let got = unsafe {
            libc::pread(
                file.as_raw_fd(),
                p.add(done).cast(),
                len - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match got {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "the file ends {} bytes before this tensor's end",
                        len - done
                    ),
                ))
            }
            g if g > 0 => done += g as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Asks for transparent huge pages over the 2 MiB-aligned interior of
/// `[p, p + len)`. Advice only: where THP is off it changes nothing.
fn huge_pages(p: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (p as usize).next_multiple_of(HUGE);
        let end = (p as usize + len) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside one live allocation of ours;
            // the advice does not change its contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len);
}

/// Faults in the whole pages of `[p, p + len)` for writing, in one call.
/// Advice only: a kernel without `MADV_POPULATE_WRITE` (before 5.14)
/// refuses it and the copy faults the pages in as it goes.
fn populate(p: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        let page = page_size();
        let start = (p as usize).next_multiple_of(page);
        let end = (p as usize + len) / page * page;
        if end > start {
            // SAFETY: the range lies inside one live allocation of ours;
            // populating only allocates its pages, contents unchanged.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len);
}

struct Backend(Arc<CheckpointSource>);

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        expect_shape(&self.0.path, name, self.0.tensor(name, dtype, dev)?, &s)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Some(stem) = name.strip_suffix(super::qblocks::SUFFIX) {
            if self.0.kept_as_stored(stem) {
                return self.0.packed(stem);
            }
        }
        self.0.tensor(name, dtype, dev)
    }

    /// Also answers `<weight>.ggml` for a GGUF weight kept as stored: the way a
    /// layer asks for its blocks as they are (see [`super::qblocks`]).
    fn contains_tensor(&self, name: &str) -> bool {
        if let Some(stem) = name.strip_suffix(super::qblocks::SUFFIX) {
            return self.0.kept_as_stored(stem);
        }
        self.0.tensors.contains_key(name)
    }
}

/// `t` if it has the shape the model asks for, else an error naming the file
/// and the tensor: what every `VarBuilder` backend over a checkpoint checks.
pub fn expect_shape(path: &Path, name: &str, t: Tensor, s: &Shape) -> candle_core::Result<Tensor> {
    if t.shape() != s {
        candle_core::bail!(
            "{}: tensor '{name}' has shape {:?}, the model expects {:?}",
            path.display(),
            t.dims(),
            s.dims()
        );
    }
    Ok(t)
}
