//! The DiT's CPU linears through oneDNN's matmul primitive (cargo feature
//! `onednn`, links `libdnnl`, 3.x C API; `build.rs` says where it is found):
//! bf16 x bf16 with f32 accumulation on AMX / AVX512_BF16 where the CPU has
//! them, f32 on AVX-512.
//!
//! The weights are used in place, as loaded: a `[N, K]` row-major matrix is
//! handed to oneDNN as the `[K, N]` operand with strides `(1, K)`, so bf16
//! weights stay bf16 in memory and nothing is widened or copied per call
//! (oneDNN may repack a tile into its own scratchpad while it multiplies).
//! The bias is added in f32 inside the primitive and the output is rounded
//! once to the activation dtype, as the widened path does.
//!
//! One engine and stream for the process; one primitive per
//! (M, K, N, dtype, bias) shape, built on first use and kept. Calls are
//! serialised by a lock (oneDNN threads each call itself).

use candle_core::{DType, Result, Storage, Tensor};
use half::bf16;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

#[allow(non_camel_case_types)]
mod ffi {
    use std::ffi::c_void;
    pub type dnnl_status_t = i32;
    pub type handle = *mut c_void;
    #[repr(C)]
    pub struct ExecArg {
        pub arg: i32,
        pub memory: handle,
    }
    pub const SUCCESS: dnnl_status_t = 0;
    pub const BF16: i32 = 2;
    pub const F32: i32 = 3;
    pub const CPU: i32 = 1;
    pub const IN_ORDER: u32 = 1;
    pub const ARG_SRC: i32 = 1;
    pub const ARG_DST: i32 = 17;
    pub const ARG_WEIGHTS: i32 = 33;
    pub const ARG_BIAS: i32 = 41;

    #[link(name = "dnnl")]
    extern "C" {
        pub fn dnnl_engine_create(engine: *mut handle, kind: i32, index: usize) -> dnnl_status_t;
        pub fn dnnl_stream_create(stream: *mut handle, engine: handle, flags: u32)
            -> dnnl_status_t;
        pub fn dnnl_stream_wait(stream: handle) -> dnnl_status_t;
        pub fn dnnl_memory_desc_create_with_strides(
            md: *mut handle,
            ndims: i32,
            dims: *const i64,
            data_type: i32,
            strides: *const i64,
        ) -> dnnl_status_t;
        pub fn dnnl_memory_desc_destroy(md: handle) -> dnnl_status_t;
        pub fn dnnl_matmul_primitive_desc_create(
            pd: *mut handle,
            engine: handle,
            src: handle,
            weights: handle,
            bias: handle,
            dst: handle,
            attr: handle,
        ) -> dnnl_status_t;
        pub fn dnnl_primitive_desc_destroy(pd: handle) -> dnnl_status_t;
        pub fn dnnl_primitive_create(p: *mut handle, pd: handle) -> dnnl_status_t;
        pub fn dnnl_memory_create(
            mem: *mut handle,
            md: handle,
            engine: handle,
            data: *mut c_void,
        ) -> dnnl_status_t;
        pub fn dnnl_memory_set_data_handle(mem: handle, data: *mut c_void) -> dnnl_status_t;
        pub fn dnnl_primitive_execute(
            p: handle,
            stream: handle,
            nargs: i32,
            args: *const ExecArg,
        ) -> dnnl_status_t;
    }
}

fn check(what: &str, s: ffi::dnnl_status_t) -> Result<()> {
    if s == ffi::SUCCESS {
        Ok(())
    } else {
        candle_core::bail!("oneDNN {what} failed (status {s})")
    }
}

/// Set in the environment by [`passive_openmp`] when it chose the wait
/// policy itself, so child processes (the speed bench's PyTorch peers) get
/// their own default back.
pub const OMP_POLICY_SET_BY_BATON: &str = "BATON_SET_OMP_WAIT_POLICY";

/// Re-executes the process once with `OMP_WAIT_POLICY=passive` unless the
/// user set a policy. oneDNN runs on libgomp, whose threads spin for a
/// while after each matmul waiting for the next; meanwhile rayon's pool
/// (softmax, norms, GELU between the matmuls) wants the same cores, and on
/// 2 cores the spinning cost the bf16 DiT forward a fifth of its time.
/// libgomp reads the policy once, when it is loaded (before `main`), so
/// setting it later has no effect; hence the exec. On failure the process
/// simply carries on as it is.
pub fn passive_openmp() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let err = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("OMP_WAIT_POLICY", "passive")
        .env(OMP_POLICY_SET_BY_BATON, "1")
        .exec();
    tracing::debug!("re-executing with OMP_WAIT_POLICY=passive failed: {err}");
}

/// One operand's memory: dims, strides and oneDNN data type.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Operand {
    dims: Vec<i64>,
    strides: Vec<i64>,
    dt: i32,
}

impl Operand {
    fn new(dims: &[usize], strides: &[usize], dt: i32) -> Self {
        Self {
            dims: dims.iter().map(|&d| d as i64).collect(),
            strides: strides.iter().map(|&d| d as i64).collect(),
            dt,
        }
    }
}

/// A matmul primitive's shape: `dst = src · weights (+ bias)`.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    src: Operand,
    weights: Operand,
    bias: Option<Operand>,
    dst: Operand,
}

/// A matmul primitive and its memory objects (data handles set per call).
struct Prim {
    prim: ffi::handle,
    src: ffi::handle,
    weights: ffi::handle,
    bias: ffi::handle,
    dst: ffi::handle,
}

struct State {
    engine: ffi::handle,
    stream: ffi::handle,
    prims: HashMap<Key, Prim>,
}

// The handles are only used under the lock below; oneDNN objects may be
// used from any thread.
unsafe impl Send for State {}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// A memory descriptor (opaque in the 3.x API), destroyed on drop.
struct Md(ffi::handle);

impl Drop for Md {
    fn drop(&mut self) {
        // SAFETY: made by `md`, destroyed once; primitives and memories
        // built from it keep copies of their own.
        unsafe { ffi::dnnl_memory_desc_destroy(self.0) };
    }
}

fn md(dims: &[i64], strides: &[i64], dt: i32) -> Result<Md> {
    let mut d = std::ptr::null_mut();
    // SAFETY: dims and strides hold `dims.len()` values each.
    let s = unsafe {
        ffi::dnnl_memory_desc_create_with_strides(
            &mut d,
            dims.len() as i32,
            dims.as_ptr(),
            dt,
            strides.as_ptr(),
        )
    };
    check("memory_desc_create", s)?;
    Ok(Md(d))
}

impl State {
    fn new() -> Result<Self> {
        let mut engine = std::ptr::null_mut();
        let mut stream = std::ptr::null_mut();
        unsafe {
            check(
                "engine_create",
                ffi::dnnl_engine_create(&mut engine, ffi::CPU, 0),
            )?;
            check(
                "stream_create",
                ffi::dnnl_stream_create(&mut stream, engine, ffi::IN_ORDER),
            )?;
        }
        Ok(Self {
            engine,
            stream,
            prims: HashMap::new(),
        })
    }

    fn prim(&mut self, key: &Key) -> Result<&Prim> {
        if !self.prims.contains_key(key) {
            let p = self.build(key)?;
            self.prims.insert(key.clone(), p);
        }
        Ok(&self.prims[key])
    }

    fn build(&self, key: &Key) -> Result<Prim> {
        let o = |o: &Operand| md(&o.dims, &o.strides, o.dt);
        let (src, weights, dst) = (o(&key.src)?, o(&key.weights)?, o(&key.dst)?);
        let bias = match &key.bias {
            Some(b) => o(b)?,
            None => o(&key.dst)?,
        };
        let bias_md = if key.bias.is_some() {
            bias.0
        } else {
            std::ptr::null_mut()
        };
        unsafe {
            let mut pd = std::ptr::null_mut();
            check(
                "matmul_primitive_desc_create",
                ffi::dnnl_matmul_primitive_desc_create(
                    &mut pd,
                    self.engine,
                    src.0,
                    weights.0,
                    bias_md,
                    dst.0,
                    std::ptr::null_mut(),
                ),
            )?;
            let mut prim = std::ptr::null_mut();
            let made = ffi::dnnl_primitive_create(&mut prim, pd);
            ffi::dnnl_primitive_desc_destroy(pd);
            check("primitive_create (matmul)", made)?;
            let mem = |d: &Md| -> Result<ffi::handle> {
                let mut h = std::ptr::null_mut();
                check(
                    "memory_create",
                    ffi::dnnl_memory_create(&mut h, d.0, self.engine, std::ptr::null_mut()),
                )?;
                Ok(h)
            };
            Ok(Prim {
                prim,
                src: mem(&src)?,
                weights: mem(&weights)?,
                bias: mem(&bias)?,
                dst: mem(&dst)?,
            })
        }
    }
}

/// A contiguous CPU tensor's elements of type `T` (`None` otherwise).
fn slice_of<'a, T>(s: &'a Storage, l: &candle_core::Layout) -> Option<&'a [T]>
where
    T: candle_core::WithDType,
{
    let (a, b) = l.contiguous_offsets()?;
    match s {
        Storage::Cpu(c) => T::cpu_storage_as_slice(c).ok().map(|v| &v[a..b]),
        _ => None,
    }
}

/// Runs the matmul `key` on raw buffers.
///
/// # Safety
/// Each pointer must address a live buffer that holds every element its
/// operand's dims and strides reach; `dst` must be writable and must not
/// overlap the others. `bias` is null exactly when `key.bias` is `None`.
unsafe fn exec(
    key: &Key,
    src: *const c_void,
    weights: *const c_void,
    bias: *const c_void,
    dst: *mut c_void,
) -> Result<()> {
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(State::new()?);
    }
    let state = guard.as_mut().expect("just set");
    let stream = state.stream;
    let prim = state.prim(key)?;
    let mut args = vec![
        ffi::ExecArg {
            arg: ffi::ARG_SRC,
            memory: prim.src,
        },
        ffi::ExecArg {
            arg: ffi::ARG_WEIGHTS,
            memory: prim.weights,
        },
        ffi::ExecArg {
            arg: ffi::ARG_DST,
            memory: prim.dst,
        },
    ];
    check(
        "set src",
        ffi::dnnl_memory_set_data_handle(prim.src, src as *mut c_void),
    )?;
    check(
        "set weights",
        ffi::dnnl_memory_set_data_handle(prim.weights, weights as *mut c_void),
    )?;
    check("set dst", ffi::dnnl_memory_set_data_handle(prim.dst, dst))?;
    if key.bias.is_some() {
        check(
            "set bias",
            ffi::dnnl_memory_set_data_handle(prim.bias, bias as *mut c_void),
        )?;
        args.push(ffi::ExecArg {
            arg: ffi::ARG_BIAS,
            memory: prim.bias,
        });
    }
    check(
        "matmul execute",
        ffi::dnnl_primitive_execute(prim.prim, stream, args.len() as i32, args.as_ptr()),
    )?;
    check("stream wait", ffi::dnnl_stream_wait(stream))
}

fn dt_of(dtype: DType) -> Option<i32> {
    match dtype {
        DType::F32 => Some(ffi::F32),
        DType::BF16 => Some(ffi::BF16),
        _ => None,
    }
}

/// `x · wᵀ + b` for `x` [.., K] and `w` [N, K] of the same dtype (f32 or
/// bf16, both on the CPU and contiguous), output in that dtype; `None` when
/// the operands are of another kind (the caller keeps its own path).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    linear_into(x, w, b, x.dtype())
}

/// [`linear`] with the output in `out` (f32 or bf16) whatever the inputs'
/// dtype: bf16 x bf16 accumulated in f32 and kept in f32, for the umT5
/// encoder, whose activations stay f32 between its linears.
pub fn linear_into(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    out: DType,
) -> Result<Option<Tensor>> {
    let dtype = x.dtype();
    let (Some(dt), Some(out_dt)) = (dt_of(dtype), dt_of(out)) else {
        return Ok(None);
    };
    if !x.device().is_cpu() || w.dtype() != dtype || w.rank() != 2 || !w.is_contiguous() {
        return Ok(None);
    }
    let (n, k) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&k) {
        candle_core::bail!(
            "oneDNN linear: input {:?} does not end in the weight's {k} inputs",
            dims
        )
    }
    let m = x.elem_count() / k.max(1);
    if m == 0 || n == 0 || k == 0 {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let bias = b.map(|b| super::fast::cast(b, DType::F32)).transpose()?;
    let mut out_shape = dims.to_vec();
    *out_shape.last_mut().expect("rank >= 1") = n;
    let key = Key {
        src: Operand::new(&[m, k], &[k, 1], dt),
        // The [N, K] row-major weight read as [K, N]: (k, n) at n*K + k.
        weights: Operand::new(&[k, n], &[1, k], dt),
        bias: bias
            .as_ref()
            .map(|_| Operand::new(&[1, n], &[n, 1], ffi::F32)),
        dst: Operand::new(&[m, n], &[n, 1], out_dt),
    };
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let bias_guard = bias.as_ref().map(|b| b.storage_and_layout());
    let bias_ptr = match &bias_guard {
        Some((s, l)) => slice_of::<f32>(s, l)
            .ok_or_else(|| candle_core::Error::Msg("oneDNN linear: bias not on the CPU".into()))?
            .as_ptr() as *const c_void,
        None => std::ptr::null(),
    };
    macro_rules! run {
        ($t:ty, $o:ty) => {{
            let (Some(xv), Some(wv)) = (slice_of::<$t>(&xs, xl), slice_of::<$t>(&ws, wl)) else {
                return Ok(None);
            };
            let mut out: Vec<$o> = Vec::with_capacity(m * n);
            // SAFETY: x holds m*k elements, w n*k, the bias n, and `out` has
            // room for the m*n the primitive writes in full before `exec`
            // returns (it waits on the stream).
            unsafe {
                exec(
                    &key,
                    xv.as_ptr() as *const c_void,
                    wv.as_ptr() as *const c_void,
                    bias_ptr,
                    out.as_mut_ptr() as *mut c_void,
                )?;
                out.set_len(m * n);
            }
            Tensor::from_vec(out, out_shape, x.device())?
        }};
    }
    let y = match (dtype, out) {
        (DType::BF16, DType::BF16) => run!(bf16, bf16),
        (DType::BF16, _) => run!(bf16, f32),
        (_, DType::BF16) => run!(f32, bf16),
        _ => run!(f32, f32),
    };
    Ok(Some(y))
}

/// Bytes of f32 scores one attention step holds across all heads
/// ([H, rows, Sk]), the least being one query row per head.
const SCORE_BYTES: usize = 4 << 20;

/// Query rows per step of [`attention`] for `h` heads over `nk` keys.
fn chunk_rows(h: usize, nq: usize, nk: usize) -> usize {
    (SCORE_BYTES / (4 * h * nk).max(1)).clamp(1, nq.max(1))
}

/// Fewer query rows per step than this and [`attention`] declines: its
/// products get too thin for the AMX tiles, and the fused kernel (key
/// tiles, no per-step scores over all keys) is faster. That is the case
/// for long sequences (a 14B expert at 720p: 40 heads over 75,600 keys).
const MIN_ROWS: usize = 32;

/// Whether [`attention`] takes `h` heads of `nq` queries over `nk` keys.
pub fn takes(h: usize, nq: usize, nk: usize) -> bool {
    chunk_rows(h, nq, nk) >= MIN_ROWS.min(nq)
}

/// Bytes [`attention`] allocates besides its output ([B, Sq, H·d] in the
/// operands' dtype of `a` bytes), for the activation formula: per chunk of
/// rows, the f32 scores, P, the packed queries, the f32 O and the row sums.
pub fn working_bytes(h: usize, nq: usize, nk: usize, head_dim: usize, a: usize) -> usize {
    let rows = chunk_rows(h, nq, nk);
    // f32 numerators overwrite the scores; bf16 ones go to their own P.
    let p = if a == 4 { 0 } else { a };
    h * rows * (nk * (4 + p) + head_dim * (4 + a) + 4)
}

/// softmax(q kᵀ / sqrt(d)) v on oneDNN's batched matmul, all heads in one
/// call; q [B, H, Sq, d], k/v [B, H, Sk, d] of one dtype (f32 or bf16, CPU,
/// contiguous). Returns [B, Sq, H * d] in q's dtype, or `None` for other
/// operands.
///
/// Query rows go in chunks whose f32 scores over all heads stay under
/// [`SCORE_BYTES`], so no whole score matrix is held: for each chunk,
/// S = q kᵀ for every head at once (f32 accumulation), an f32 softmax per
/// row in parallel (written as P in the input dtype, bf16 for bf16 inputs
/// as PyTorch's bf16 attention does), then O = P v for every head into a
/// [H, rows, d] block that is interleaved into the output rows. One call
/// per chunk instead of one per head and chunk: at the speed bench's 768
/// tokens a head's product is too small for oneDNN to spread over threads.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Option<Tensor>> {
    use rayon::prelude::*;
    let dtype = q.dtype();
    let Some(dt) = dt_of(dtype) else {
        return Ok(None);
    };
    if !q.device().is_cpu() || k.dtype() != dtype || v.dtype() != dtype {
        return Ok(None);
    }
    let (b, h, sq, d) = q.dims4()?;
    let sk = k.dim(2)?;
    if k.dims() != [b, h, sk, d] || v.dims() != [b, h, sk, d] || sq == 0 || sk == 0 || d == 0 {
        return Ok(None);
    }
    if !takes(h, sq, sk) {
        return Ok(None);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let rows = chunk_rows(h, sq, sk);
    let in_place = dtype == DType::F32;
    let scale = 1.0 / (d as f32).sqrt();
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    macro_rules! run {
        ($t:ty, $to:expr) => {{
            let (Some(qv), Some(kv), Some(vv)) = (
                slice_of::<$t>(&qs, ql),
                slice_of::<$t>(&ks, kl),
                slice_of::<$t>(&vs, vl),
            ) else {
                return Ok(None);
            };
            let mut out: Vec<$t> = vec![<$t>::default(); b * sq * h * d];
            let mut scores = vec![0f32; h * rows * sk];
            // P in bf16 (f32 numerators overwrite the scores instead).
            let mut p: Vec<bf16> = vec![bf16::ZERO; if in_place { 0 } else { h * rows * sk }];
            let mut o: Vec<f32> = vec![0.0; h * rows * d];
            let mut inv: Vec<f32> = vec![0.0; h * rows];
            let mut qc: Vec<$t> = vec![<$t>::default(); h * rows * d];
            for bi in 0..b {
                let mut r0 = 0;
                while r0 < sq {
                    let n = rows.min(sq - r0);
                    // Rows r0..r0+n of every head of q, packed: with a
                    // head stride other than n*d (q read in place) oneDNN
                    // left its AMX kernel for a plain jit GEMM that ran
                    // q kᵀ at a quarter of the speed of P v (seen in 2.6).
                    for (hi, dst) in qc[..h * n * d].chunks_mut(n * d).enumerate() {
                        let from = ((bi * h + hi) * sq + r0) * d;
                        dst.copy_from_slice(&qv[from..from + n * d]);
                    }
                    let qk = Key {
                        src: Operand::new(&[h, n, d], &[n * d, d, 1], dt),
                        // Each head's k [sk, d] read as kᵀ [d, sk].
                        weights: Operand::new(&[h, d, sk], &[sk * d, 1, d], dt),
                        bias: None,
                        dst: Operand::new(&[h, n, sk], &[n * sk, sk, 1], ffi::F32),
                    };
                    let pv = Key {
                        src: Operand::new(&[h, n, sk], &[n * sk, sk, 1], dt),
                        weights: Operand::new(&[h, sk, d], &[sk * d, d, 1], dt),
                        bias: None,
                        dst: Operand::new(&[h, n, d], &[n * d, d, 1], ffi::F32),
                    };
                    let kvoff = bi * h * sk * d;
                    // SAFETY: the packed q chunk holds h*n*d elements, k/v from `kvoff` hold the
                    // batch's h*sk*d elements, and the scores, P and O
                    // buffers hold h*rows*sk >= h*n*sk (O: h*rows*d) elements.
                    unsafe {
                        exec(
                            &qk,
                            qc.as_ptr() as *const c_void,
                            kv.as_ptr().add(kvoff) as *const c_void,
                            std::ptr::null(),
                            scores.as_mut_ptr() as *mut c_void,
                        )?;
                    }
                    // P = exp(scale (s - max)) unnormalised, in one pass
                    // from the f32 scores: in f32 over the scores themselves
                    // (half the memory traffic), in bf16 into P. Each row's
                    // 1 / sum scales O below, where it is rounded once.
                    if in_place {
                        scores[..h * n * sk]
                            .par_chunks_mut(sk)
                            .zip(inv[..h * n].par_iter_mut())
                            .for_each(|(srow, inv)| {
                                let m = row_max(srow);
                                *inv = 1.0 / numerators_in_place(srow, scale, m);
                            });
                    } else {
                        scores[..h * n * sk]
                            .par_chunks(sk)
                            .zip(p[..h * n * sk].par_chunks_mut(sk))
                            .zip(inv[..h * n].par_iter_mut())
                            .for_each(|((srow, prow), inv)| {
                                *inv = 1.0 / numerators_bf16(srow, scale, row_max(srow), prow);
                            });
                    }
                    let p_src = if in_place {
                        scores.as_ptr() as *const c_void
                    } else {
                        p.as_ptr() as *const c_void
                    };
                    // SAFETY: as above; O is written in full before `exec`
                    // returns.
                    unsafe {
                        exec(
                            &pv,
                            p_src,
                            vv.as_ptr().add(kvoff) as *const c_void,
                            std::ptr::null(),
                            o.as_mut_ptr() as *mut c_void,
                        )?;
                    }
                    // [H, n, d] -> rows r0..r0+n of [B, Sq, H * d].
                    let dst = &mut out[(bi * sq + r0) * h * d..(bi * sq + r0 + n) * h * d];
                    dst.par_chunks_mut(h * d).enumerate().for_each(|(r, row)| {
                        for (hi, seg) in row.chunks_mut(d).enumerate() {
                            let i = hi * n + r;
                            $to(&o[i * d..(i + 1) * d], inv[i], seg);
                        }
                    });
                    r0 += n;
                }
            }
            Tensor::from_vec(out, (b, sq, h * d), q.device())?
        }};
    }
    let o = if dtype == DType::BF16 {
        run!(bf16, scale_to_bf16)
    } else {
        run!(f32, |src: &[f32], k: f32, dst: &mut [f32]| {
            for (o, x) in dst.iter_mut().zip(src) {
                *o = x * k;
            }
        })
    };
    Ok(Some(o))
}

/// The largest of a row of scores (they hold no NaN).
fn row_max(s: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected at run time.
        return unsafe { row_max_avx512(s) };
    }
    row_max_lanes(s)
}

/// [`row_max_lanes`] compiled for AVX-512 (16 lanes in one register).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_max_avx512(s: &[f32]) -> f32 {
    row_max_lanes(s)
}

#[inline(always)]
fn row_max_lanes(s: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    for c in s.chunks(16) {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    lanes.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// p = bf16(exp(k (s - m))) for a row of f32 scores `s` with maximum `m`;
/// returns the sum of the numerators before rounding.
fn numerators_bf16(s: &[f32], k: f32, m: f32, p: &mut [bf16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the features were detected at run time; `p` holds at
        // least the `n` bf16 written.
        return unsafe {
            numerators_avx512(
                s.as_ptr(),
                s.len().min(p.len()),
                k,
                m,
                p.as_mut_ptr().cast(),
                true,
            )
        };
    }
    let mut total = 0.0;
    for (o, &x) in p.iter_mut().zip(s) {
        let e = super::expf::exp_poly(k * (x - m));
        total += e;
        *o = bf16::from_f32(e);
    }
    total
}

/// [`numerators_bf16`] over f32 scores in place: `s` becomes exp(k (s - m)).
fn numerators_in_place(s: &mut [f32], k: f32, m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the features were detected at run time; each lane group
        // is read before the same lanes are written.
        return unsafe {
            numerators_avx512(s.as_ptr(), s.len(), k, m, s.as_mut_ptr().cast(), false)
        };
    }
    let mut total = 0.0;
    for x in s.iter_mut() {
        *x = super::expf::exp_poly(k * (*x - m));
        total += *x;
    }
    total
}

/// The numerators 16 lanes at a time: `n` scores from `s`, written to `p`
/// as f32 or bf16 (`bf`); `p` may be `s` itself in f32.
///
/// # Safety
/// `s` must hold `n` readable f32 and `p` room for `n` values of its type.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn numerators_avx512(s: *const f32, n: usize, k: f32, m: f32, p: *mut u8, bf: bool) -> f32 {
    use std::arch::x86_64::*;
    let (kv, km) = (_mm512_set1_ps(k), _mm512_set1_ps(k * m));
    let mut sum = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let lanes = (n - i).min(16);
        let mask: __mmask16 = if lanes == 16 { !0 } else { (1u16 << lanes) - 1 };
        // SAFETY: the mask keeps loads and stores within the first n values.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, s.add(i));
            let e = _mm512_maskz_mov_ps(mask, super::expf::exp512(_mm512_fmsub_ps(x, kv, km)));
            sum = _mm512_add_ps(sum, e);
            if bf {
                let r = super::fast::bf16_bits_rne(e);
                _mm512_mask_cvtepi32_storeu_epi16(p.cast::<i16>().add(i).cast(), mask, r);
            } else {
                _mm512_mask_storeu_ps(p.cast::<f32>().add(i), mask, e);
            }
        }
        i += 16;
    }
    _mm512_reduce_add_ps(sum)
}

/// dst = bf16(src * k), rounded to nearest-even as `half` does for finite
/// values (softmax rows hold no NaN). 16 lanes at a time on AVX-512: this
/// conversion of every probability was a scalar loop.
fn scale_to_bf16(src: &[f32], k: f32, dst: &mut [bf16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the features were detected at run time (avx512bw implies avx512f).
        return unsafe { scale_to_bf16_avx512(src, k, dst) };
    }
    for (o, x) in dst.iter_mut().zip(src) {
        *o = bf16::from_f32(x * k);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn scale_to_bf16_avx512(src: &[f32], k: f32, dst: &mut [half::bf16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let kv = _mm512_set1_ps(k);
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n elements of both slices; unaligned accesses.
        let x = unsafe { _mm512_mul_ps(_mm512_loadu_ps(src.as_ptr().add(i)), kv) };
        let h = _mm512_cvtepi32_epi16(super::fast::bf16_bits_rne(x));
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h) };
        i += 16;
    }
    for (o, x) in dst[i..n].iter_mut().zip(&src[i..n]) {
        *o = half::bf16::from_f32(x * k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.to_dtype(DType::F32).unwrap();
        let b = b.to_dtype(DType::F32).unwrap();
        let e = (a - &b).unwrap().sqr().unwrap().sum_all().unwrap();
        let n = b.sqr().unwrap().sum_all().unwrap();
        (e.to_scalar::<f32>().unwrap() / n.to_scalar::<f32>().unwrap()).sqrt()
    }

    #[test]
    fn bf16_rounding_matches_half() {
        // 1000 values (62 vectors and a tail), ties included.
        let src: Vec<f32> = (0..1000)
            .map(|i| f32::from_bits(0x3f80_0000 + i * 0x8000 + (i % 3) * 0x7fff))
            .collect();
        let mut got = vec![bf16::ZERO; src.len()];
        scale_to_bf16(&src, 0.37, &mut got);
        for (g, x) in got.iter().zip(&src) {
            assert_eq!(g.to_bits(), bf16::from_f32(x * 0.37).to_bits(), "{x}");
        }
    }

    #[test]
    fn linear_matches_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 37, 96), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (80, 96), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 80, &dev).unwrap();
        let want = candle_nn::Linear::new(w.clone(), Some(b.clone()));
        let want = candle_core::Module::forward(&want, &x).unwrap();
        let got = linear(&x, &w, Some(&b)).unwrap().unwrap();
        assert!(rel(&got, &want) < 1e-6, "f32 {}", rel(&got, &want));
        let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let got = linear(&bf(&x), &bf(&w), Some(&bf(&b))).unwrap().unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        assert!(rel(&got, &want) < 1e-2, "bf16 {}", rel(&got, &want));
    }

    #[test]
    fn attention_matches_the_chunked_reference() {
        let dev = Device::Cpu;
        for (sq, sk) in [(7, 5), (300, 300), (130, 520)] {
            let q = Tensor::randn(0f32, 1.0, (2, 3, sq, 16), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (2, 3, sk, 16), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (2, 3, sk, 16), &dev).unwrap();
            let want = super::super::attention::attention_chunked(&q, &k, &v, 1 << 30).unwrap();
            let got = attention(&q, &k, &v).unwrap().unwrap();
            assert!(
                rel(&got, &want) < 1e-5,
                "f32 {sq}x{sk}: {}",
                rel(&got, &want)
            );
            let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
            let got = attention(&bf(&q), &bf(&k), &bf(&v)).unwrap().unwrap();
            assert!(
                rel(&got, &want) < 1e-2,
                "bf16 {sq}x{sk}: {}",
                rel(&got, &want)
            );
        }
    }
}
