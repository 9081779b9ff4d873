//! The DiT's CPU linears through oneDNN's matmul primitive (cargo feature
//! `onednn`, links the system `libdnnl`, 2.x C API): bf16 x bf16 with f32
//! accumulation on AMX / AVX512_BF16 where the CPU has them, f32 on AVX-512.
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
    /// `dnnl_memory_desc_t` (696 bytes in 2.6) and `dnnl_matmul_desc_t`
    /// (2,800 bytes) are plain structs the library fills in; they are only
    /// passed by pointer here, so opaque buffers with room to spare do.
    #[repr(C, align(16))]
    pub struct MemDesc(pub [u8; 2048]);
    #[repr(C, align(16))]
    pub struct OpDesc(pub [u8; 8192]);
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
        pub fn dnnl_stream_create(stream: *mut handle, engine: handle, flags: u32) -> dnnl_status_t;
        pub fn dnnl_stream_wait(stream: handle) -> dnnl_status_t;
        pub fn dnnl_memory_desc_init_by_strides(
            md: *mut MemDesc,
            ndims: i32,
            dims: *const i64,
            data_type: i32,
            strides: *const i64,
        ) -> dnnl_status_t;
        pub fn dnnl_matmul_desc_init(
            desc: *mut OpDesc,
            src: *const MemDesc,
            weights: *const MemDesc,
            bias: *const MemDesc,
            dst: *const MemDesc,
        ) -> dnnl_status_t;
        pub fn dnnl_primitive_desc_create(
            pd: *mut handle,
            op_desc: *const OpDesc,
            attr: handle,
            engine: handle,
            hint: handle,
        ) -> dnnl_status_t;
        pub fn dnnl_primitive_desc_destroy(pd: handle) -> dnnl_status_t;
        pub fn dnnl_primitive_create(p: *mut handle, pd: handle) -> dnnl_status_t;
        pub fn dnnl_memory_create(
            mem: *mut handle,
            md: *const MemDesc,
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

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    m: usize,
    k: usize,
    n: usize,
    bf16: bool,
    bias: bool,
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

fn md(dims: &[i64], strides: &[i64], dt: i32) -> Result<Box<ffi::MemDesc>> {
    let mut d = Box::new(ffi::MemDesc([0; 2048]));
    let s = unsafe {
        ffi::dnnl_memory_desc_init_by_strides(
            &mut *d,
            dims.len() as i32,
            dims.as_ptr(),
            dt,
            strides.as_ptr(),
        )
    };
    check("memory_desc_init", s)?;
    Ok(d)
}

impl State {
    fn new() -> Result<Self> {
        let mut engine = std::ptr::null_mut();
        let mut stream = std::ptr::null_mut();
        unsafe {
            check("engine_create", ffi::dnnl_engine_create(&mut engine, ffi::CPU, 0))?;
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

    fn prim(&mut self, key: Key) -> Result<&Prim> {
        if !self.prims.contains_key(&key) {
            let p = self.build(key)?;
            self.prims.insert(key, p);
        }
        Ok(&self.prims[&key])
    }

    fn build(&self, key: Key) -> Result<Prim> {
        let (m, k, n) = (key.m as i64, key.k as i64, key.n as i64);
        let dt = if key.bf16 { ffi::BF16 } else { ffi::F32 };
        let src = md(&[m, k], &[k, 1], dt)?;
        // The [N, K] row-major weight read as [K, N]: element (k, n) at n*K + k.
        let weights = md(&[k, n], &[1, k], dt)?;
        let bias = md(&[1, n], &[n, 1], ffi::F32)?;
        let dst = md(&[m, n], &[n, 1], dt)?;
        let mut op = Box::new(ffi::OpDesc([0; 8192]));
        let bias_ptr: *const ffi::MemDesc = if key.bias { &*bias } else { std::ptr::null() };
        unsafe {
            check(
                "matmul_desc_init",
                ffi::dnnl_matmul_desc_init(&mut *op, &*src, &*weights, bias_ptr, &*dst),
            )?;
            let mut pd = std::ptr::null_mut();
            check(
                "primitive_desc_create (matmul)",
                ffi::dnnl_primitive_desc_create(
                    &mut pd,
                    &*op,
                    std::ptr::null_mut(),
                    self.engine,
                    std::ptr::null_mut(),
                ),
            )?;
            let mut prim = std::ptr::null_mut();
            let made = ffi::dnnl_primitive_create(&mut prim, pd);
            ffi::dnnl_primitive_desc_destroy(pd);
            check("primitive_create (matmul)", made)?;
            let mem = |d: &ffi::MemDesc| -> Result<ffi::handle> {
                let mut h = std::ptr::null_mut();
                check(
                    "memory_create",
                    ffi::dnnl_memory_create(&mut h, d, self.engine, std::ptr::null_mut()),
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

/// `x · wᵀ + b` for `x` [.., K] and `w` [N, K] of the same dtype (f32 or
/// bf16, both on the CPU and contiguous), output in that dtype; `None` when
/// the operands are of another kind (the caller keeps its own path).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    let dtype = x.dtype();
    if !x.device().is_cpu()
        || w.dtype() != dtype
        || !matches!(dtype, DType::F32 | DType::BF16)
        || w.rank() != 2
        || !w.is_contiguous()
    {
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
        m,
        k,
        n,
        bf16: dtype == DType::BF16,
        bias: bias.is_some(),
    };
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(State::new()?);
    }
    let state = guard.as_mut().expect("just set");
    let stream = state.stream;
    let prim = state.prim(key)?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let bias_guard = bias.as_ref().map(|b| b.storage_and_layout());
    let bias_ptr = match &bias_guard {
        Some((s, l)) => slice_of::<f32>(s, l)
            .ok_or_else(|| candle_core::Error::Msg("oneDNN linear: bias not on the CPU".into()))?
            .as_ptr() as *mut c_void,
        None => std::ptr::null_mut(),
    };
    macro_rules! run {
        ($t:ty) => {{
            let (Some(xv), Some(wv)) = (slice_of::<$t>(&xs, xl), slice_of::<$t>(&ws, wl)) else {
                return Ok(None);
            };
            let mut out: Vec<$t> = Vec::with_capacity(m * n);
            let mut args = vec![
                ffi::ExecArg { arg: ffi::ARG_SRC, memory: prim.src },
                ffi::ExecArg { arg: ffi::ARG_WEIGHTS, memory: prim.weights },
                ffi::ExecArg { arg: ffi::ARG_DST, memory: prim.dst },
            ];
            if key.bias {
                args.push(ffi::ExecArg { arg: ffi::ARG_BIAS, memory: prim.bias });
            }
            // SAFETY: the handles point at live buffers of the sizes the
            // primitive was built for (m*k, n*k, n and m*n elements); oneDNN
            // only reads src, weights and bias and writes all of dst, which
            // is complete when the in-order stream has been waited on.
            unsafe {
                check("set src", ffi::dnnl_memory_set_data_handle(prim.src, xv.as_ptr() as *mut c_void))?;
                check("set weights", ffi::dnnl_memory_set_data_handle(prim.weights, wv.as_ptr() as *mut c_void))?;
                check("set dst", ffi::dnnl_memory_set_data_handle(prim.dst, out.as_mut_ptr() as *mut c_void))?;
                if key.bias {
                    check("set bias", ffi::dnnl_memory_set_data_handle(prim.bias, bias_ptr))?;
                }
                check(
                    "matmul execute",
                    ffi::dnnl_primitive_execute(prim.prim, stream, args.len() as i32, args.as_ptr()),
                )?;
                check("stream wait", ffi::dnnl_stream_wait(stream))?;
                out.set_len(m * n);
            }
            Tensor::from_vec(out, out_shape, x.device())?
        }};
    }
    let y = if key.bf16 { run!(bf16) } else { run!(f32) };
    Ok(Some(y))
}
