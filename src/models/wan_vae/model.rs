//! The Wan 2.1 VAE (`WanVAE_` / `AutoencoderKLWan`) over the original key names.
//!
//! Both directions run chunk by chunk with a causal feature cache, exactly as
//! the reference does: the decoder takes one latent frame at a time (1 video
//! frame out for the first, `temporal_factor` for every later one) and the
//! encoder takes 1, then 4, 4, ... video frames. Only the last frames each
//! causal conv has seen persist between chunks ([`FeatCache`]), so activation
//! memory depends on the frame size, not on the video length.
//!
//! Inside, activations are frame-major, [B, T, C, H, W] (see `conv.rs`); the
//! public API takes and returns the reference's [B, C, T, H, W].

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{BlockSpec, ResampleMode, WanVaeConfig};
use super::conv::{compute_dtype, rms_norm, CausalConv3d, Conv2d, FeatCache, Slot};
use crate::models::wan::attention::attention;

/// Wan's `RMS_norm`: L2-normalise over channels (eps 1e-12, no mean
/// subtraction), times sqrt(C) and a per-channel gamma. The checkpoint's gamma
/// is [C, 1, 1, 1] for 3-D blocks and [C, 1, 1] in the attention block; both
/// apply to the channel axis of our [B, T, C, H, W].
#[derive(Debug, Clone)]
pub(super) struct RmsNorm {
    /// gamma * sqrt(C), shaped [1, 1, C, 1, 1].
    scale: Tensor,
}

impl RmsNorm {
    pub(super) fn new(dim: usize, images: bool, vb: VarBuilder) -> Result<Self> {
        let gamma = if images {
            vb.get((dim, 1, 1), "gamma")?
        } else {
            vb.get((dim, 1, 1, 1), "gamma")?
        };
        let scale = (gamma.reshape((1, 1, dim, 1, 1))? * (dim as f64).sqrt())?;
        Ok(Self { scale })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.scale)
    }
}

/// `ResidualBlock`: norm, SiLU, causal conv, norm, SiLU, (dropout), causal conv,
/// plus a 1x1x1 shortcut conv when the width changes.
#[derive(Debug, Clone)]
pub(super) struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub(super) fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        let r = vb.pp("residual");
        let shortcut = if c_in != c_out {
            Some(CausalConv3d::new(
                c_in,
                c_out,
                [1, 1, 1],
                vb.pp("shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: RmsNorm::new(c_in, false, r.pp("0"))?,
            conv1: CausalConv3d::new(c_in, c_out, [3, 3, 3], r.pp("2"))?,
            norm2: RmsNorm::new(c_out, false, r.pp("3"))?,
            conv2: CausalConv3d::new(c_out, c_out, [3, 3, 3], r.pp("6"))?,
            shortcut,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let h = match &self.shortcut {
            Some(s) => s.forward_valid(x, 1)?,
            None => x.clone(),
        };
        let r = self
            .conv1
            .forward_fused(x, Some(&self.norm1.scale), cache.next_slot(), None)?;
        self.conv2
            .forward_fused(&r, Some(&self.norm2.scale), cache.next_slot(), Some(&h))
    }
}

/// `AttentionBlock`: single-head self-attention over the H*W positions of
/// each frame separately, with 1x1 convs for q, k, v and the output.
#[derive(Debug, Clone)]
pub(super) struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
}

impl AttentionBlock {
    pub(super) fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(dim, true, vb.pp("norm"))?,
            to_qkv: Conv2d::new(dim, 3 * dim, 1, 1, 0, vb.pp("to_qkv"))?,
            proj: Conv2d::new(dim, dim, 1, 1, 0, vb.pp("proj"))?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let n = b * t;
        let y = self.norm.forward(x)?.reshape((n, c, h, w))?;
        let qkv = self.to_qkv.forward(&y)?.reshape((n, 3 * c, h * w))?;
        // [N, 1, HW, C] per part: one head of width C.
        let part = |i: usize| -> Result<Tensor> {
            qkv.narrow(1, i * c, c)?
                .transpose(1, 2)?
                .unsqueeze(1)?
                .contiguous()
        };
        let o = attention(&part(0)?, &part(1)?, &part(2)?)?; // [N, HW, C]
        let o = o.transpose(1, 2)?.reshape((n, c, h, w))?;
        let o = self.proj.forward(&o)?.reshape((b, t, c, h, w))?;
        o + x
    }
}

/// `Resample`: the spatial x2 up/down sampling of a stage boundary, with a
/// temporal x2 conv for the 3-D modes.
///
/// upsample3d's time conv (C -> 2C, kernel 3) is skipped on the first chunk,
/// so the first latent frame yields one frame, and on later chunks starts its
/// causal history from zeros (not from the first chunk's frame). Its two
/// output halves become two consecutive frames. downsample3d's time conv
/// (kernel 3, stride 2, no padding) runs on the last frame of the previous
/// chunk followed by this chunk, after the spatial part; the first chunk
/// passes through unchanged.
#[derive(Debug, Clone)]
pub(super) struct Resample {
    mode: ResampleMode,
    conv: Conv2d,
    time_conv: Option<CausalConv3d>,
}

impl Resample {
    pub(super) fn new(dim: usize, mode: ResampleMode, vb: VarBuilder) -> Result<Self> {
        Self::with_up_width(dim, dim / 2, mode, vb)
    }

    /// An upsample's conv goes C -> `up_out` (2.1: C/2; 2.2 keeps C).
    pub(super) fn with_up_width(
        dim: usize,
        up_out: usize,
        mode: ResampleMode,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (conv, time_conv) = match mode {
            ResampleMode::Up2d | ResampleMode::Up3d => (
                Conv2d::new(dim, up_out, 3, 1, 1, vb.pp("resample.1"))?,
                (mode == ResampleMode::Up3d)
                    .then(|| CausalConv3d::new(dim, 2 * dim, [3, 1, 1], vb.pp("time_conv")))
                    .transpose()?,
            ),
            ResampleMode::Down2d | ResampleMode::Down3d => (
                Conv2d::new(dim, dim, 3, 2, 0, vb.pp("resample.1"))?,
                (mode == ResampleMode::Down3d)
                    .then(|| CausalConv3d::new(dim, dim, [3, 1, 1], vb.pp("time_conv")))
                    .transpose()?,
            ),
        };
        Ok(Self {
            mode,
            conv,
            time_conv,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = x.clone();
        if let (ResampleMode::Up3d, Some(tc)) = (self.mode, &self.time_conv) {
            let slot = cache.next_slot();
            if matches!(slot, Slot::Fresh) {
                *slot = Slot::Skipped;
            } else {
                let (b, t, c, h, w) = x.dims5()?;
                // [B, T, 2C, H, W] -> [B, 2T, C, H, W]: frame 2t is the first half.
                x = tc.forward_cached(&x, slot)?.reshape((b, 2 * t, c, h, w))?;
            }
        }
        let (b, t, c, h, w) = x.dims5()?;
        let frames = x.reshape((b * t, c, h, w))?;
        let y = match self.mode {
            ResampleMode::Up2d | ResampleMode::Up3d => self.conv.forward_up2(&frames)?,
            ResampleMode::Down2d | ResampleMode::Down3d => {
                if h < 2 || w < 2 {
                    candle_core::bail!("wan vae: cannot downsample a {h}x{w} frame")
                }
                let padded = frames.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
                self.conv.forward(&padded)?
            }
        };
        let (_, c2, h2, w2) = y.dims4()?;
        let mut x = y.reshape((b, t, c2, h2, w2))?;
        if let (ResampleMode::Down3d, Some(tc)) = (self.mode, &self.time_conv) {
            let slot = cache.next_slot();
            let last = x.narrow(1, t - 1, 1)?.copy()?;
            if let Slot::Frames(prev) = slot {
                let full = Tensor::cat(&[&*prev, &x], 1)?;
                x = tc.forward_valid(&full, 2)?;
            }
            *slot = Slot::Frames(last);
        }
        Ok(x)
    }
}

#[derive(Debug, Clone)]
enum Block {
    Res(ResidualBlock),
    Attn(AttentionBlock),
    Resample(Resample),
}

impl Block {
    pub(super) fn new(spec: &BlockSpec, vb: VarBuilder) -> Result<Self> {
        Ok(match *spec {
            BlockSpec::Res { c_in, c_out } => Block::Res(ResidualBlock::new(c_in, c_out, vb)?),
            BlockSpec::Attn { dim } => Block::Attn(AttentionBlock::new(dim, vb)?),
            BlockSpec::Resample { dim, mode } => Block::Resample(Resample::new(dim, mode, vb)?),
        })
    }

    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        match self {
            Block::Res(b) => b.forward(x, cache),
            Block::Attn(b) => b.forward(x),
            Block::Resample(b) => b.forward(x, cache),
        }
    }
}

/// `middle`: residual, attention, residual at the narrowest resolution.
#[derive(Debug, Clone)]
pub(super) struct Middle {
    res0: ResidualBlock,
    attn: AttentionBlock,
    res2: ResidualBlock,
}

impl Middle {
    pub(super) fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            res0: ResidualBlock::new(dim, dim, vb.pp("0"))?,
            attn: AttentionBlock::new(dim, vb.pp("1"))?,
            res2: ResidualBlock::new(dim, dim, vb.pp("2"))?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let x = self.res0.forward(x, cache)?;
        let x = self.attn.forward(&x)?;
        self.res2.forward(&x, cache)
    }
}

/// `head`: norm, SiLU, causal conv.
#[derive(Debug, Clone)]
pub(super) struct Head {
    norm: RmsNorm,
    conv: CausalConv3d,
}

impl Head {
    pub(super) fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(c_in, false, vb.pp("0"))?,
            conv: CausalConv3d::new(c_in, c_out, [3, 3, 3], vb.pp("2"))?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        self.conv
            .forward_fused(x, Some(&self.norm.scale), cache.next_slot(), None)
    }
}

/// `Encoder3d`: video chunk [B, T, 3, H, W] -> [B, T', 2 z_dim, H/8, W/8].
#[derive(Debug, Clone)]
struct Encoder {
    conv1: CausalConv3d,
    blocks: Vec<Block>,
    middle: Middle,
    head: Head,
}

impl Encoder {
    pub(super) fn new(cfg: &WanVaeConfig, vb: VarBuilder) -> Result<Self> {
        let dims = cfg.encoder_dims();
        let out = *dims.last().unwrap_or(&0);
        let vd = vb.pp("downsamples");
        Ok(Self {
            conv1: CausalConv3d::new(cfg.in_channels, dims[0], [3, 3, 3], vb.pp("conv1"))?,
            blocks: cfg
                .encoder_plan()
                .iter()
                .enumerate()
                .map(|(n, s)| Block::new(s, vd.pp(n)))
                .collect::<Result<_>>()?,
            middle: Middle::new(out, vb.pp("middle"))?,
            head: Head::new(out, 2 * cfg.z_dim, vb.pp("head"))?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = self.conv1.forward_cached(x, cache.next_slot())?;
        for b in &self.blocks {
            x = b.forward(&x, cache)?;
        }
        let x = self.middle.forward(&x, cache)?;
        self.head.forward(&x, cache)
    }
}

/// Receives named activations of a decode, for debugging: (module name as
/// in diffusers, chunk index, activation [B, C, T, H, W]).
pub type Observer<'a> = dyn FnMut(&str, usize, &Tensor) -> Result<()> + 'a;

/// `Decoder3d`: latent chunk [B, 1, z_dim, h, w] -> [B, T', 3, 8h, 8w].
#[derive(Debug, Clone)]
struct Decoder {
    conv1: CausalConv3d,
    middle: Middle,
    blocks: Vec<Block>,
    head: Head,
}

impl Decoder {
    pub(super) fn new(cfg: &WanVaeConfig, vb: VarBuilder) -> Result<Self> {
        let dims = cfg.decoder_dims();
        let out = *dims.last().unwrap_or(&0);
        let vu = vb.pp("upsamples");
        Ok(Self {
            conv1: CausalConv3d::new(cfg.z_dim, dims[0], [3, 3, 3], vb.pp("conv1"))?,
            middle: Middle::new(dims[0], vb.pp("middle"))?,
            blocks: cfg
                .decoder_plan()
                .iter()
                .enumerate()
                .map(|(n, s)| Block::new(s, vu.pp(n)))
                .collect::<Result<_>>()?,
            head: Head::new(out, cfg.out_channels, vb.pp("head"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cache: &mut FeatCache,
        chunk: usize,
        mut observe: Option<&mut Observer>,
    ) -> Result<Tensor> {
        let mut emit = |name: &str, t: &Tensor| -> Result<()> {
            match observe.as_mut() {
                Some(f) => f(name, chunk, &to_channels_first(t)?),
                None => Ok(()),
            }
        };
        let x = self.conv1.forward_cached(x, cache.next_slot())?;
        emit("decoder.conv_in", &x)?;
        let mut x = self.middle.forward(&x, cache)?;
        emit("decoder.mid_block", &x)?;
        let mut stage = 0;
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(&x, cache)?;
            if matches!(b, Block::Resample(_)) || i + 1 == self.blocks.len() {
                emit(&format!("decoder.up_blocks.{stage}"), &x)?;
                stage += 1;
            }
        }
        self.head.forward(&x, cache)
    }
}

/// [B, C, T, H, W] <-> [B, T, C, H, W] (the permutation is its own inverse).
pub(super) fn swap_ct(x: &Tensor) -> Result<Tensor> {
    x.permute((0, 2, 1, 3, 4))?.contiguous()
}

fn to_channels_first(x: &Tensor) -> Result<Tensor> {
    swap_ct(x)
}

/// The Wan 2.1 VAE.
#[derive(Debug, Clone)]
pub struct WanVae {
    cfg: WanVaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    /// `conv1` (diffusers `quant_conv`): 2z -> 2z after the encoder.
    quant_conv: CausalConv3d,
    /// `conv2` (diffusers `post_quant_conv`): z -> z before the decoder.
    post_quant_conv: CausalConv3d,
    dtype: DType,
    device: Device,
}

impl WanVae {
    /// `vb` at the model root, with original (canonical) key names. On the
    /// CPU the weights are loaded as f32 whatever `vb`'s dtype: candle 0.11 has
    /// no CPU conv/matmul kernels for bf16/f16. Elsewhere `vb`'s dtype is the
    /// compute dtype.
    pub fn new(cfg: &WanVaeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let dtype = compute_dtype(vb.dtype(), vb.device());
        let vb = vb.set_dtype(dtype);
        let z = cfg.z_dim;
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            quant_conv: CausalConv3d::new(2 * z, 2 * z, [1, 1, 1], vb.pp("conv1"))?,
            post_quant_conv: CausalConv3d::new(z, z, [1, 1, 1], vb.pp("conv2"))?,
            cfg: cfg.clone(),
            dtype,
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &WanVaeConfig {
        &self.cfg
    }

    /// The dtype activations are computed in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Where the weights are (inputs must be moved there).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Decodes raw latents z [B, z_dim, T, h, w] (denormalised: see
    /// [`denormalize`]) to video [B, 3, 1 + 4(T-1), 8h, 8w] in f32, clamped to
    /// [-1, 1] like diffusers' `decode`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_chunks(z, true)?.collect_video()
    }

    /// [`WanVae::decode`] without the final clamp.
    pub fn decode_unclamped(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_chunks(z, false)?.collect_video()
    }

    /// A decode as an iterator over video chunks, one per latent frame
    /// ([B, 3, 1, H, W] first, then [B, 3, 4, H, W]), so frames can be written
    /// out while later ones are decoded.
    pub fn decode_chunks(&self, z: &Tensor, clamp: bool) -> Result<DecodeChunks<'_>> {
        let (_, c, t, h, w) = z.dims5().map_err(|_| {
            candle_core::Error::Msg(format!(
                "wan vae decode: latent must be [B, C, T, H, W], got {:?}",
                z.dims()
            ))
        })?;
        if c != self.cfg.z_dim || t == 0 || h == 0 || w == 0 {
            candle_core::bail!(
                "wan vae decode: latent {:?} does not fit [B, {}, T>=1, H>=1, W>=1]",
                z.dims(),
                self.cfg.z_dim
            )
        }
        Ok(DecodeChunks {
            vae: self,
            z: swap_ct(&z.to_device(&self.device)?.to_dtype(self.dtype)?)?,
            next: 0,
            cache: FeatCache::new(),
            clamp,
        })
    }

    /// [`WanVae::decode`] reporting named intermediate activations to
    /// `observe` (names as diffusers' modules, so they compare with forward
    /// hooks): `post_quant_conv`, `decoder.conv_in`, `decoder.mid_block`,
    /// `decoder.up_blocks.{i}`, per chunk.
    pub fn decode_observed(
        &self,
        z: &Tensor,
        clamp: bool,
        observe: &mut Observer,
    ) -> Result<Tensor> {
        let mut it = self.decode_chunks(z, clamp)?;
        let mut outs = Vec::new();
        while let Some(o) = it.step(Some(&mut *observe))? {
            outs.push(o);
        }
        Tensor::cat(&outs, 2)
    }

    /// Encodes video [B, 3, 1 + 4k, H, W] (values in [-1, 1], H and W multiples
    /// of 8) to the latent mean (mu) [B, z_dim, 1 + k, H/8, W/8], raw
    /// (unnormalised: see [`normalize`]), in f32.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        Ok(self.encode_dist(video)?.0)
    }

    /// The latent distribution: (mean, logvar), logvar clamped to [-30, 20]
    /// like diffusers' `DiagonalGaussianDistribution`.
    pub fn encode_dist(&self, video: &Tensor) -> Result<(Tensor, Tensor)> {
        let cfg = &self.cfg;
        let (_, c, t, h, w) = video.dims5().map_err(|_| {
            candle_core::Error::Msg(format!(
                "wan vae encode: video must be [B, C, T, H, W], got {:?}",
                video.dims()
            ))
        })?;
        let (tf, sf) = (cfg.temporal_factor(), cfg.spatial_factor());
        if c != cfg.in_channels
            || t == 0
            || (t - 1) % tf != 0
            || h == 0
            || w == 0
            || h % sf != 0
            || w % sf != 0
        {
            candle_core::bail!(
                "wan vae encode: video {:?} does not fit [B, {}, 1 + {tf}k, H, W] with H, W multiples of {sf}",
                video.dims(),
                cfg.in_channels
            )
        }
        let x = swap_ct(&video.to_device(&self.device)?.to_dtype(self.dtype)?)?;
        let mut cache = FeatCache::new();
        let mut outs = Vec::new();
        let mut start = 0;
        while start < t {
            let n = if start == 0 { 1 } else { tf };
            cache.begin_chunk();
            let chunk = x.narrow(1, start, n)?;
            outs.push(self.encoder.forward(&chunk, &mut cache)?);
            start += n;
        }
        let out = self.quant_conv.forward_valid(&Tensor::cat(&outs, 1)?, 1)?;
        let z = cfg.z_dim;
        let mu = swap_ct(&out.narrow(2, 0, z)?)?.to_dtype(DType::F32)?;
        let logvar = swap_ct(&out.narrow(2, z, z)?)?
            .to_dtype(DType::F32)?
            .clamp(-30f32, 20f32)?;
        Ok((mu, logvar))
    }
}

/// Iterator over the video chunks of one decode (see [`WanVae::decode_chunks`]).
pub struct DecodeChunks<'a> {
    vae: &'a WanVae,
    /// Latents [B, T, C, h, w] in the compute dtype.
    z: Tensor,
    next: usize,
    cache: FeatCache,
    clamp: bool,
}

impl DecodeChunks<'_> {
    /// Latent frames in total.
    pub fn len_latent(&self) -> usize {
        self.z.dim(1).unwrap_or(0)
    }

    /// Bytes of activations carried between chunks.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    fn step(&mut self, mut observe: Option<&mut Observer>) -> Result<Option<Tensor>> {
        if self.next >= self.len_latent() {
            return Ok(None);
        }
        let i = self.next;
        self.next += 1;
        self.cache.begin_chunk();
        // post_quant_conv is 1x1x1, so per chunk equals all frames at once.
        let x = self
            .vae
            .post_quant_conv
            .forward_valid(&self.z.narrow(1, i, 1)?, 1)?;
        if let Some(f) = observe.as_mut() {
            f("post_quant_conv", i, &to_channels_first(&x)?)?;
        }
        let y = self.vae.decoder.forward(&x, &mut self.cache, i, observe)?;
        let y = swap_ct(&y)?.to_dtype(DType::F32)?;
        Ok(Some(if self.clamp { y.clamp(-1f32, 1f32)? } else { y }))
    }

    /// Runs the remaining chunks and concatenates them along time.
    pub fn collect_video(self) -> Result<Tensor> {
        let outs = self.collect::<Result<Vec<_>>>()?;
        Tensor::cat(&outs, 2)
    }
}

impl Iterator for DecodeChunks<'_> {
    type Item = Result<Tensor>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(None).transpose()
    }
}

fn latent_stats(latent: &Tensor) -> Result<(Tensor, Tensor)> {
    let c = latent.dims().get(1).copied().unwrap_or(0);
    let Some((mean, std)) = super::formats::stats(c).filter(|_| latent.rank() >= 2) else {
        candle_core::bail!(
            "wan vae: latent {:?} must have 16 (Wan 2.1) or 48 (Wan 2.2) channels in dim 1",
            latent.dims()
        )
    };
    let mut shape = vec![1; latent.rank()];
    shape[1] = c;
    let dev = latent.device();
    let dt = latent.dtype();
    let mean = Tensor::new(mean, dev)?
        .reshape(shape.clone())?
        .to_dtype(dt)?;
    let std = Tensor::new(std, dev)?.reshape(shape)?.to_dtype(dt)?;
    Ok((mean, std))
}

/// Raw VAE latent (encoder mean) -> what the DiT sees: (mu - mean) / std.
pub fn normalize(latent: &Tensor) -> Result<Tensor> {
    let (mean, std) = latent_stats(latent)?;
    latent.broadcast_sub(&mean)?.broadcast_div(&std)
}

/// Sampler output -> decoder input: latent * std + mean.
pub fn denormalize(latent: &Tensor) -> Result<Tensor> {
    let (mean, std) = latent_stats(latent)?;
    latent.broadcast_mul(&std)?.broadcast_add(&mean)
}
