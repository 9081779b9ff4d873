//! Causal 3-D convolution and the per-call-site temporal cache.
//!
//! candle has no conv3d. Activations here are kept frame-major, [B, T, C, H, W],
//! so a group of frames is a batch of images without a copy, and a conv with a
//! (kt, kh, kw) kernel is the sum over its kt temporal taps of a 2-D conv of
//! the input shifted by that tap ([`Conv3dImpl::PerTap`]).
//!
//! The alternative, folding the taps into the channel axis (one 2-D conv over
//! `cat(x[t], x[t+1], x[t+2])` with a [O, kt*C, kh, kw] kernel,
//! [`Conv3dImpl::Folded`]), does one larger GEMM per tile instead of kt
//! smaller ones but first copies the input kt times, and loses everywhere.
//! Measured with `cargo bench --bench vae_decode -- conv` on the 2-core
//! AMD EPYC dev box (f32, candle 0.11's tiled-im2col conv2d, median of 3,
//! kernel 3x3x3 with 2 history frames, seconds):
//!
//! | layer (C -> O, frames x H x W)             | per-tap | folded |
//! |--------------------------------------------|---------|--------|
//! | 96 -> 96, 4 x 120 x 208                    | 5.73    | 7.65   |
//! | 192 -> 192, 4 x 120 x 208 (real stage 3)   | 11.06   | 15.46  |
//! | 384 -> 384, 1 x 60 x 104 (real middle)     | 1.87    | 2.10   |
//! | 16 -> 16, 4 x 240 x 416 (width-16 VAE)     | 1.18    | 2.35   |
//!
//! Peak memory per conv is the input's NHWC copy inside candle's conv2d plus
//! one output per tap being summed; candle tiles the im2col buffer itself.
//!
//! On the CPU in f32 neither is used: [`Conv3dImpl::Gemm`] runs each tap as
//! a GEMM straight over zero-bordered input planes, tiled and multi-threaded
//! (`cpu_conv.rs`), with the RMS norm + SiLU before a conv and the residual
//! after it fused in. PerTap stays the path of other devices and the
//! reference the CPU path is tested against.

use std::sync::Arc;

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};
use candle_nn::VarBuilder;

use super::cpu_conv::{self, CpuKernel, Fill, Planes};

/// How a 3-D conv is lowered to candle's conv2d.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conv3dImpl {
    /// Sum over temporal taps of conv2d(x shifted by the tap, w[:, :, tap]).
    PerTap,
    /// One conv2d over the taps stacked along channels.
    Folded,
    /// One GEMM per tap over padded planes (`cpu_conv`); CPU f32 only.
    Gemm,
}

/// The lowering the model uses for weights `w`: [`Conv3dImpl::Gemm`] on the
/// CPU in f32, else [`Conv3dImpl::PerTap`] (see the module docs). Setting
/// `BATON_VAE_CONV=candle` keeps the candle path on the CPU too (to profile
/// or time the reference).
pub fn default_impl(w: &Tensor) -> Conv3dImpl {
    let candle = std::env::var("BATON_VAE_CONV").is_ok_and(|v| v == "candle");
    if w.device().is_cpu() && w.dtype() == DType::F32 && !candle {
        Conv3dImpl::Gemm
    } else {
        Conv3dImpl::PerTap
    }
}

/// The f32 data of a contiguous CPU tensor's storage.
fn cpu_f32<'a>(s: &'a Storage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("wan vae: the CPU conv path needs a contiguous f32 CPU tensor"),
    }
}

/// Wan's RMS norm over the channels of x [B, T, C, H, W]: x / max(|x|, 1e-12)
/// * scale, scale [1, 1, C, 1, 1] (gamma * sqrt(C)).
pub fn rms_norm(x: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(2)?.sqrt()?.maximum(1e-12)?;
    x.broadcast_div(&norm)?.broadcast_mul(scale)
}

/// Temporal state of one causal call site across the chunks of a decode or
/// encode (Wan's `feat_cache[idx]`).
#[derive(Debug, Clone, Default)]
pub enum Slot {
    /// Not visited yet (first chunk).
    #[default]
    Fresh,
    /// Visited, but the conv did not run (upsample3d on the first chunk): the
    /// conv's history starts at the next chunk, as if preceded by zeros.
    Skipped,
    /// The last input frames the conv has seen, [B, n, C, H, W].
    Frames(Tensor),
}

impl Slot {
    fn frames(&self) -> Option<&Tensor> {
        match self {
            Slot::Frames(t) => Some(t),
            _ => None,
        }
    }
}

/// The slots of one chunked pass, handed out in call order: each module asks
/// for its slots in the same order on every chunk, so slot n always belongs
/// to the same call site.
#[derive(Debug, Default)]
pub struct FeatCache {
    slots: Vec<Slot>,
    cursor: usize,
}

impl FeatCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rewinds to the first slot; call before each chunk.
    pub fn begin_chunk(&mut self) {
        self.cursor = 0;
    }

    /// The next call site's slot.
    pub fn next_slot(&mut self) -> &mut Slot {
        if self.cursor == self.slots.len() {
            self.slots.push(Slot::Fresh);
        }
        self.cursor += 1;
        &mut self.slots[self.cursor - 1]
    }

    /// Bytes held by cached frames (activation memory that persists between
    /// chunks).
    pub fn bytes(&self) -> usize {
        self.slots
            .iter()
            .filter_map(Slot::frames)
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

/// `CausalConv3d`: a Conv3d padded by (kh-1)/2, (kw-1)/2 in space and by
/// kt-1 frames in front only, in time.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    /// The weights in the layout `imp` uses; only that one is kept, so a
    /// loaded VAE holds each weight once (the ledger counts it once).
    kernel: Kernel,
    /// [1, O, 1, 1].
    bias: Tensor,
    c_in: usize,
    c_out: usize,
    kt: usize,
    pad: usize,
}

/// A causal conv's weights, lowered for one strategy.
#[derive(Debug, Clone)]
enum Kernel {
    /// kt × [O, C, kh, kw], contiguous.
    Taps(Vec<Tensor>),
    /// [O, kt·C, kh, kw].
    Folded(Tensor),
    /// Per-tap [O, C] for the CPU GEMM path.
    Cpu(Arc<CpuKernel>),
}

impl CausalConv3d {
    /// `vb` at the conv (keys `weight` [O, C, kt, kh, kw], `bias` [O]); kh == kw, odd.
    pub fn new(c_in: usize, c_out: usize, kernel: [usize; 3], vb: VarBuilder) -> Result<Self> {
        let [kt, kh, kw] = kernel;
        let w = vb.get((c_out, c_in, kt, kh, kw), "weight")?;
        let bias = vb.get(c_out, "bias")?.reshape((1, c_out, 1, 1))?;
        let imp = default_impl(&w);
        Self::from_weights(w, bias, imp)
    }

    /// From a [O, C, kt, kh, kw] weight and [.., O, ..] bias.
    pub fn from_weights(w: Tensor, bias: Tensor, imp: Conv3dImpl) -> Result<Self> {
        let (c_out, c_in, kt, kh, kw) = w.dims5()?;
        if kh != kw || kh % 2 == 0 {
            candle_core::bail!("wan vae: conv kernel {:?} is not square and odd", w.dims())
        }
        let kernel = match imp {
            Conv3dImpl::PerTap => Kernel::Taps(
                (0..kt)
                    .map(|k| w.narrow(2, k, 1)?.squeeze(2)?.contiguous())
                    .collect::<Result<Vec<_>>>()?,
            ),
            Conv3dImpl::Folded => Kernel::Folded(
                w.permute((0, 2, 1, 3, 4))?
                    .contiguous()?
                    .reshape((c_out, kt * c_in, kh, kw))?,
            ),
            Conv3dImpl::Gemm => Kernel::Cpu(Arc::new(cpu_kernel(&w, &bias)?)),
        };
        Ok(Self {
            kernel,
            bias: bias.reshape((1, c_out, 1, 1))?,
            c_in,
            c_out,
            kt,
            pad: (kh - 1) / 2,
        })
    }

    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// The CPU kernel, when this conv runs on the GEMM path and `x` is a
    /// CPU f32 tensor.
    fn cpu(&self, x: &Tensor) -> Option<&CpuKernel> {
        match &self.kernel {
            Kernel::Cpu(k) if x.device().is_cpu() && x.dtype() == DType::F32 => Some(k),
            _ => None,
        }
    }

    /// x's [B, T, C, H, W], checked against the conv's input channels.
    fn input_dims(&self, x: &Tensor) -> Result<(usize, usize, usize, usize, usize)> {
        let dims = x.dims5()?;
        if dims.2 != self.c_in {
            candle_core::bail!(
                "wan vae: conv expects {} channels, got input {:?}",
                self.c_in,
                x.dims()
            )
        }
        Ok(dims)
    }

    /// The conv over x [B, T, C, H, W] with no temporal padding ("valid" in
    /// time), temporal stride `stride`; returns [B, T_out, O, H, W].
    pub fn forward_valid(&self, x: &Tensor, stride: usize) -> Result<Tensor> {
        let (b, t, c, h, w) = self.input_dims(x)?;
        if t < self.kt || stride == 0 {
            candle_core::bail!(
                "wan vae: conv over {t} frames needs at least {} (input {:?})",
                self.kt,
                x.dims()
            )
        }
        if let Some(k) = self.cpu(x) {
            let x = x.contiguous()?;
            let (st, l) = x.storage_and_layout();
            let data = cpu_f32(&st, l)?;
            let g = Planes {
                c,
                h,
                w,
                pad: self.pad,
            };
            let fr = c * h * w;
            let mut out = Vec::new();
            for bi in 0..b {
                let fills: Vec<Fill> = (0..t)
                    .map(|i| Fill::Copy(&data[(bi * t + i) * fr..][..fr]))
                    .collect();
                out.extend(run_cpu(k, g, &fills, stride, None));
            }
            let t_out = (t - self.kt) / stride + 1;
            return Tensor::from_vec(out, (b, t_out, self.c_out, h, w), x.device());
        }
        let t_out = (t - self.kt) / stride + 1;
        // Frames k, k + stride, ... k + (t_out - 1) * stride as a batch of images.
        let shifted = |k: usize| -> Result<Tensor> {
            let xs = if stride == 1 {
                x.narrow(1, k, t_out)?
            } else {
                let idx: Vec<u32> = (0..t_out).map(|j| (k + j * stride) as u32).collect();
                x.index_select(&Tensor::new(idx, x.device())?, 1)?
            };
            xs.reshape((b * t_out, c, h, w))
        };
        let y = match &self.kernel {
            Kernel::Taps(taps) => {
                let mut acc: Option<Tensor> = None;
                for (k, wk) in taps.iter().enumerate() {
                    let y = shifted(k)?.conv2d(wk, self.pad, 1, 1, 1)?;
                    acc = Some(match acc {
                        None => y,
                        Some(a) => (a + y)?,
                    });
                }
                acc.expect("kt >= 1 by construction")
            }
            Kernel::Cpu(_) => candle_core::bail!(
                "wan vae: a CPU f32 conv got a {:?} input on {:?}",
                x.dtype(),
                x.device()
            ),
            Kernel::Folded(folded) => {
                let parts = (0..self.kt)
                    .map(|k| shifted(k)?.reshape((b, t_out, c, h, w)))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 2)?
                    .reshape((b * t_out, self.kt * c, h, w))?
                    .conv2d(folded, self.pad, 1, 1, 1)?
            }
        };
        y.broadcast_add(&self.bias)?
            .reshape((b, t_out, self.c_out, h, w))
    }

    /// The causal conv over the whole sequence x [B, T, C, H, W] (zeros before
    /// the first frame); returns [B, T, O, H, W].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_cached(x, &mut Slot::Fresh)
    }

    /// The causal conv over one chunk, continuing the sequence whose last input
    /// frames are in `slot`; updates `slot` with this chunk's. Chunk by chunk
    /// this equals [`CausalConv3d::forward`] over the concatenated chunks.
    pub fn forward_cached(&self, x: &Tensor, slot: &mut Slot) -> Result<Tensor> {
        self.forward_fused(x, None, slot, None)
    }

    /// `forward_cached(silu(rms_norm(x, scale)))` plus `residual`
    /// ([B, T, O, H, W]) when given; on the CPU path the norm, SiLU and the
    /// add happen inside the conv's own passes. `scale` is [1, 1, C, 1, 1].
    pub fn forward_fused(
        &self,
        x: &Tensor,
        norm: Option<&Tensor>,
        slot: &mut Slot,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        if let Some(k) = self.cpu(x) {
            return self.cached_cpu(k, x, norm, slot, residual);
        }
        let y = match norm {
            Some(scale) => self.cached_ref(&rms_norm(x, scale)?.silu()?, slot)?,
            None => self.cached_ref(x, slot)?,
        };
        match residual {
            Some(r) => r + y,
            None => Ok(y),
        }
    }

    /// The CPU path of [`CausalConv3d::forward_fused`].
    fn cached_cpu(
        &self,
        k: &CpuKernel,
        x: &Tensor,
        norm: Option<&Tensor>,
        slot: &mut Slot,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let need = self.kt - 1;
        let (b, t, c, h, w) = self.input_dims(x)?;
        let scale = norm
            .map(|s| s.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        let x = x.contiguous()?;
        // Only the last `need` cached frames are read.
        let hist = match slot.frames() {
            Some(hs) => {
                let n = hs.dim(1)?;
                Some(hs.narrow(1, n - n.min(need), n.min(need))?.contiguous()?)
            }
            None => None,
        };
        let have = hist.as_ref().map(|t| t.dim(1)).transpose()?.unwrap_or(0);
        let residual = residual.map(Tensor::contiguous).transpose()?;
        let (xs, xl) = x.storage_and_layout();
        let xd = cpu_f32(&xs, xl)?;
        let hg = hist.as_ref().map(|t| t.storage_and_layout());
        let hd = hg.as_ref().map(|(s, l)| cpu_f32(s, l)).transpose()?;
        let rg = residual.as_ref().map(|t| t.storage_and_layout());
        let rd = rg.as_ref().map(|(s, l)| cpu_f32(s, l)).transpose()?;
        let g = Planes {
            c,
            h,
            w,
            pad: self.pad,
        };
        let fr = c * h * w;
        let ofr = self.c_out * h * w;
        let (mut out, mut keep) = (Vec::with_capacity(b * t * ofr), Vec::new());
        for bi in 0..b {
            let mut fills = vec![Fill::Zero; need.saturating_sub(have)];
            if let Some(hd) = hd {
                fills.extend((0..have).map(|i| Fill::Copy(&hd[(bi * have + i) * fr..][..fr])));
            }
            for i in 0..t {
                let f = &xd[(bi * t + i) * fr..][..fr];
                fills.push(match &scale {
                    Some(s) => Fill::NormSilu(f, s),
                    None => Fill::Copy(f),
                });
            }
            let res = rd.map(|r| &r[bi * t * ofr..][..t * ofr]);
            let (y, tail) = if need == 0 {
                (run_cpu(k, g, &fills, 1, res), Vec::new())
            } else {
                run_cpu_keep(k, g, &fills, res, need)
            };
            out.extend(y);
            keep.extend(tail);
        }
        if need > 0 {
            *slot = Slot::Frames(Tensor::from_vec(keep, (b, need, c, h, w), x.device())?);
        }
        Tensor::from_vec(out, (b, t, self.c_out, h, w), x.device())
    }

    /// The candle path of [`CausalConv3d::forward_cached`].
    fn cached_ref(&self, x: &Tensor, slot: &mut Slot) -> Result<Tensor> {
        let need = self.kt - 1;
        if need == 0 {
            return self.forward_valid(x, 1);
        }
        let (b, _, c, h, w) = x.dims5()?;
        let hist = slot.frames().cloned();
        let have = hist.as_ref().map(|t| t.dim(1)).transpose()?.unwrap_or(0);
        let mut parts = Vec::with_capacity(3);
        if have < need {
            parts.push(Tensor::zeros(
                (b, need - have, c, h, w),
                x.dtype(),
                x.device(),
            )?);
        }
        if let Some(hist) = hist {
            parts.push(hist);
        }
        parts.push(x.clone());
        let full = Tensor::cat(&parts, 1)?;
        drop(parts);
        let n = full.dim(1)?;
        // A copy, so the cache does not keep the whole padded chunk alive.
        *slot = Slot::Frames(full.narrow(1, n - need, need)?.copy()?);
        self.forward_valid(&full, 1)
    }
}

/// The CPU kernel of a [O, C, kt, k, k] weight and a bias with O elements.
fn cpu_kernel(w: &Tensor, bias: &Tensor) -> Result<CpuKernel> {
    let (c_out, c_in, kt, kh, _) = w.dims5()?;
    let wv = w.flatten_all()?.to_vec1::<f32>()?;
    let bv = bias.flatten_all()?.to_vec1::<f32>()?;
    Ok(CpuKernel::new(&wv, bv, [c_out, c_in, kt, kh]))
}

/// Runs a CPU conv over `fills`; with no spatial padding and nothing to
/// compute before the conv, straight over the frames, else over padded
/// planes filled first.
fn run_cpu(
    k: &CpuKernel,
    g: Planes,
    fills: &[Fill],
    stride: usize,
    res: Option<&[f32]>,
) -> Vec<f32> {
    let direct: Option<Vec<Option<&[f32]>>> = (g.pad == 0)
        .then(|| {
            fills
                .iter()
                .map(|f| match f {
                    Fill::Copy(s) => Some(Some(*s)),
                    Fill::Zero => Some(None),
                    _ => None,
                })
                .collect()
        })
        .flatten();
    match direct {
        Some(frames) => cpu_conv::conv(k, g, &frames, stride, res),
        None => {
            let buf = cpu_conv::fill_planes(g, fills);
            let frames: Vec<Option<&[f32]>> = buf.chunks_exact(g.frame()).map(Some).collect();
            cpu_conv::conv(k, g, &frames, stride, res)
        }
    }
}

/// [`run_cpu`] with stride 1, also returning the last `need` input frames
/// as the conv saw them ([need, C, H, W], unpadded), for the cache.
fn run_cpu_keep(
    k: &CpuKernel,
    g: Planes,
    fills: &[Fill],
    res: Option<&[f32]>,
    need: usize,
) -> (Vec<f32>, Vec<f32>) {
    let fr = g.c * g.h * g.w;
    let n = fills.len();
    let plain = fills
        .iter()
        .all(|f| matches!(f, Fill::Copy(_) | Fill::Zero));
    if g.pad == 0 && plain {
        let mut keep = vec![0f32; need * fr];
        for (dst, f) in keep.chunks_exact_mut(fr).zip(&fills[n - need..]) {
            if let Fill::Copy(s) = f {
                dst.copy_from_slice(s);
            }
        }
        return (run_cpu(k, g, fills, 1, res), keep);
    }
    let buf = cpu_conv::fill_planes(g, fills);
    let mut keep = Vec::with_capacity(need * fr);
    let (wp, p) = (g.wp(), g.pad);
    for f in buf.chunks_exact(g.frame()).skip(n - need) {
        for c in 0..g.c {
            for y in 0..g.h {
                let at = c * g.plane() + (y + p) * wp + p;
                keep.extend_from_slice(&f[at..at + g.w]);
            }
        }
    }
    let frames: Vec<Option<&[f32]>> = buf.chunks_exact(g.frame()).map(Some).collect();
    (cpu_conv::conv(k, g, &frames, 1, res), keep)
}

/// A Conv2d over frames: x [N, C, H, W].
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    /// [1, O, 1, 1].
    bias: Tensor,
    stride: usize,
    pad: usize,
    /// The CPU GEMM kernel (stride 1, "same" padding, CPU f32 weights).
    cpu: Option<Arc<CpuKernel>>,
}

impl Conv2d {
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, k, k), "weight")?;
        let bias = vb.get(c_out, "bias")?.reshape((1, c_out, 1, 1))?;
        let cpu = (stride == 1
            && k % 2 == 1
            && pad == (k - 1) / 2
            && default_impl(&weight) == Conv3dImpl::Gemm)
            .then(|| cpu_kernel(&weight.unsqueeze(2)?, &bias).map(Arc::new))
            .transpose()?;
        // The CPU path keeps its own copy of the weights; drop candle's.
        let weight = if cpu.is_some() {
            Tensor::zeros(1, DType::F32, weight.device())?
        } else {
            weight
        };
        Ok(Self {
            weight,
            bias,
            stride,
            pad,
            cpu,
        })
    }

    /// The CPU path over frames x [N, C, H, W], upsampled 2x (nearest) first
    /// when `up`.
    fn forward_cpu(&self, k: &CpuKernel, x: &Tensor, up: bool) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if c != k.c_in {
            candle_core::bail!(
                "wan vae: conv2d expects {} channels, got input {:?}",
                k.c_in,
                x.dims()
            )
        }
        let x = x.contiguous()?;
        let (st, l) = x.storage_and_layout();
        let data = cpu_f32(&st, l)?;
        let (ho, wo) = if up { (2 * h, 2 * w) } else { (h, w) };
        let g = Planes {
            c,
            h: ho,
            w: wo,
            pad: self.pad,
        };
        let fr = c * h * w;
        let fills: Vec<Fill> = (0..n)
            .map(|i| {
                let f = &data[i * fr..][..fr];
                if up {
                    Fill::Up2(f)
                } else {
                    Fill::Copy(f)
                }
            })
            .collect();
        // kt = 1: every frame is its own output frame.
        let out = run_cpu(k, g, &fills, 1, None);
        Tensor::from_vec(out, (n, k.c_out, ho, wo), x.device())
    }

    fn cpu_for(&self, x: &Tensor) -> Option<&CpuKernel> {
        self.cpu
            .as_deref()
            .filter(|_| x.device().is_cpu() && x.dtype() == DType::F32)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(k) = self.cpu_for(x) {
            return self.forward_cpu(k, x, false);
        }
        if self.cpu.is_some() {
            candle_core::bail!(
                "wan vae: a CPU f32 conv2d got a {:?} input on {:?}",
                x.dtype(),
                x.device()
            )
        }
        x.conv2d(&self.weight, self.pad, self.stride, 1, 1)?
            .broadcast_add(&self.bias)
    }

    /// The conv over x [N, C, H, W] upsampled 2x (nearest) first; on the CPU
    /// path the upsampling happens as the conv's input is laid out.
    pub fn forward_up2(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(k) = self.cpu_for(x) {
            return self.forward_cpu(k, x, true);
        }
        let (_, _, h, w) = x.dims4()?;
        self.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}

/// Dtype the VAE computes in on a device: f32 on the CPU, whose conv2d and
/// matmul have no bf16/f16 kernels in candle 0.11.
pub fn compute_dtype(dtype: DType, device: &candle_core::Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        dtype
    }
}
