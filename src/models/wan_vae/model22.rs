//! The Wan 2.2 VAE (TI2V-5B's: 48 latent channels, 16x spatial): the 2.1
//! blocks (causal convs with the same feature cache, RMS norm, attention,
//! resamples that keep their width) in stages with parameter-free
//! shortcuts (AvgDown3D in the encoder, DupUp3D in the decoder), around a
//! 2x2 patchify. Decode runs one latent frame at a time, encode 1, then 4,
//! 4, ... frames, so memory stays flat in the video length. Activations are
//! frame-major [B, T, C, H, W] inside, as in the 2.1 model.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::ResampleMode;
use super::conv::{compute_dtype, CausalConv3d, FeatCache};
use super::layout22::Wan22VaeConfig;
use super::model::{swap_ct, Head, Middle, Resample, ResidualBlock};

/// [B, F, 3, H, W] -> [B, F, 12, H/2, W/2]: channel c*4 + r*2 + q holds
/// pixel (2y + q, 2x + r) of channel c (the column offset is the outer one).
fn patchify(x: &Tensor) -> Result<Tensor> {
    let (b, f, c, h, w) = x.dims5()?;
    x.reshape(vec![b, f, c, h / 2, 2, w / 2, 2])?
        .permute(vec![0, 1, 2, 6, 4, 3, 5])?
        .contiguous()?
        .reshape((b, f, c * 4, h / 2, w / 2))
}

fn unpatchify(x: &Tensor) -> Result<Tensor> {
    let (b, f, c4, h, w) = x.dims5()?;
    let c = c4 / 4;
    x.reshape(vec![b, f, c, 2, 2, h, w])?
        .permute(vec![0, 1, 2, 5, 4, 6, 3])?
        .contiguous()?
        .reshape((b, f, c, 2 * h, 2 * w))
}

/// AvgDown3D: front-pad time to a multiple of `ft`, fold (ft, fs, fs) into
/// channels (((c·ft + a)·fs + p)·fs + q), average groups down to `out`.
fn avg_down(x: &Tensor, out: usize, ft: usize, fs: usize) -> Result<Tensor> {
    let (b, t, c, h, w) = x.dims5()?;
    let pad = (ft - t % ft) % ft;
    let x = if pad > 0 {
        Tensor::cat(
            &[&Tensor::zeros((b, pad, c, h, w), x.dtype(), x.device())?, x],
            1,
        )?
    } else {
        x.clone()
    };
    let t = (t + pad) / ft;
    let (hs, ws) = (h / fs, w / fs);
    let folded = x
        .reshape(vec![b, t, ft, c, hs, fs, ws, fs])?
        .permute(vec![0, 1, 3, 2, 5, 7, 4, 6])?
        .contiguous()?;
    let g = c * ft * fs * fs / out;
    folded.reshape(vec![b, t, out, g, hs, ws])?.mean(3)
}

/// DupUp3D: each input channel repeated R = out·ft·fs²/C times, unfolded
/// into (ft, fs, fs); the first chunk drops its first ft − 1 frames.
fn dup_up(x: &Tensor, out: usize, ft: usize, fs: usize, first: bool) -> Result<Tensor> {
    let (b, t, c, h, w) = x.dims5()?;
    let r = out * ft * fs * fs / c;
    let y = x
        .unsqueeze(3)?
        .broadcast_as(vec![b, t, c, r, h, w])?
        .reshape(vec![b, t, out, ft, fs, fs, h, w])?
        .permute(vec![0, 1, 3, 2, 6, 4, 7, 5])?
        .contiguous()?
        .reshape((b, t * ft, out, h * fs, w * fs))?;
    if first && ft > 1 {
        y.narrow(1, ft - 1, t * ft - (ft - 1))
    } else {
        Ok(y)
    }
}

/// One encoder or decoder stage: residual blocks, an optional resample, and
/// the shortcut (in -> out channels with factors ft, fs).
#[derive(Debug, Clone)]
struct Stage {
    res: Vec<ResidualBlock>,
    resample: Option<Resample>,
    out: usize,
    ft: usize,
    fs: usize,
    /// Encoder (AvgDown3D, always present) or decoder (DupUp3D, with the resample).
    down: bool,
}

impl Stage {
    fn forward(&self, x: &Tensor, cache: &mut FeatCache, first: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for r in &self.res {
            y = r.forward(&y, cache)?;
        }
        if let Some(r) = &self.resample {
            y = r.forward(&y, cache)?;
        }
        if self.down {
            y + avg_down(x, self.out, self.ft, self.fs)?
        } else if self.resample.is_some() {
            y + dup_up(x, self.out, self.ft, self.fs, first)?
        } else {
            Ok(y)
        }
    }
}

#[derive(Debug, Clone)]
struct Coder {
    conv1: CausalConv3d,
    stages: Vec<Stage>,
    middle: Middle,
    head: Head,
}

impl Coder {
    fn encoder(cfg: &Wan22VaeConfig, vb: VarBuilder) -> Result<Self> {
        let dims = cfg.encoder_dims();
        let n = cfg.dim_mult.len();
        let mut stages = Vec::new();
        for i in 0..n {
            let (cin, cout) = (dims[i], dims[i + 1]);
            let vs = vb.pp(format!("downsamples.{i}.downsamples"));
            let res = (0..cfg.num_res_blocks)
                .map(|j| ResidualBlock::new(if j == 0 { cin } else { cout }, cout, vs.pp(j)))
                .collect::<Result<_>>()?;
            let t = cfg.temporal_downsample.get(i).copied().unwrap_or(false);
            let resample = (i + 1 < n)
                .then(|| {
                    let mode = if t {
                        ResampleMode::Down3d
                    } else {
                        ResampleMode::Down2d
                    };
                    Resample::new(cout, mode, vs.pp(cfg.num_res_blocks))
                })
                .transpose()?;
            let fs = if i + 1 < n { 2 } else { 1 };
            stages.push(Stage {
                res,
                resample,
                out: cout,
                ft: if t { 2 } else { 1 },
                fs,
                down: true,
            });
        }
        let out = dims[n];
        Ok(Self {
            conv1: CausalConv3d::new(12, dims[0], [3, 3, 3], vb.pp("conv1"))?,
            stages,
            middle: Middle::new(out, vb.pp("middle"))?,
            head: Head::new(out, 2 * cfg.z_dim, vb.pp("head"))?,
        })
    }

    fn decoder(cfg: &Wan22VaeConfig, vb: VarBuilder) -> Result<Self> {
        let dims = cfg.decoder_dims();
        let n = cfg.dim_mult.len();
        let up_t: Vec<bool> = cfg.temporal_downsample.iter().rev().copied().collect();
        let mut stages = Vec::new();
        for i in 0..n {
            let (cin, cout) = (dims[i], dims[i + 1]);
            let vs = vb.pp(format!("upsamples.{i}.upsamples"));
            let res = (0..=cfg.num_res_blocks)
                .map(|j| ResidualBlock::new(if j == 0 { cin } else { cout }, cout, vs.pp(j)))
                .collect::<Result<_>>()?;
            let t = up_t.get(i).copied().unwrap_or(false);
            let resample = (i + 1 < n)
                .then(|| {
                    let mode = if t {
                        ResampleMode::Up3d
                    } else {
                        ResampleMode::Up2d
                    };
                    Resample::with_up_width(cout, cout, mode, vs.pp(cfg.num_res_blocks + 1))
                })
                .transpose()?;
            stages.push(Stage {
                res,
                resample,
                out: cout,
                ft: if t { 2 } else { 1 },
                fs: 2,
                down: false,
            });
        }
        Ok(Self {
            conv1: CausalConv3d::new(cfg.z_dim, dims[0], [3, 3, 3], vb.pp("conv1"))?,
            middle: Middle::new(dims[0], vb.pp("middle"))?,
            stages,
            head: Head::new(dims[n], 12, vb.pp("head"))?,
        })
    }

    fn encode(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = self.conv1.forward_cached(x, cache.next_slot())?;
        for s in &self.stages {
            x = s.forward(&x, cache, false)?;
        }
        let x = self.middle.forward(&x, cache)?;
        self.head.forward(&x, cache)
    }

    fn decode(&self, x: &Tensor, cache: &mut FeatCache, first: bool) -> Result<Tensor> {
        let x = self.conv1.forward_cached(x, cache.next_slot())?;
        let mut x = self.middle.forward(&x, cache)?;
        for s in &self.stages {
            x = s.forward(&x, cache, first)?;
        }
        self.head.forward(&x, cache)
    }
}

/// The Wan 2.2 VAE, over original (ComfyUI) key names.
#[derive(Debug, Clone)]
pub struct Wan22Vae {
    cfg: Wan22VaeConfig,
    encoder: Coder,
    decoder: Coder,
    quant_conv: CausalConv3d,
    post_quant_conv: CausalConv3d,
    dtype: DType,
    device: Device,
}

impl Wan22Vae {
    pub fn new(cfg: &Wan22VaeConfig, vb: VarBuilder) -> Result<Self> {
        let dtype = compute_dtype(vb.dtype(), vb.device());
        let vb = vb.set_dtype(dtype);
        let z = cfg.z_dim;
        Ok(Self {
            encoder: Coder::encoder(cfg, vb.pp("encoder"))?,
            decoder: Coder::decoder(cfg, vb.pp("decoder"))?,
            quant_conv: CausalConv3d::new(2 * z, 2 * z, [1, 1, 1], vb.pp("conv1"))?,
            post_quant_conv: CausalConv3d::new(z, z, [1, 1, 1], vb.pp("conv2"))?,
            cfg: cfg.clone(),
            dtype,
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &Wan22VaeConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Decodes latent frame `i` of raw `z` [B, T, z_dim, h, w] (frame-major,
    /// compute dtype) with the running cache: [B, 3, F, H, W] f32.
    fn decode_frame(
        &self,
        z: &Tensor,
        i: usize,
        cache: &mut FeatCache,
        clamp: bool,
    ) -> Result<Tensor> {
        cache.begin_chunk();
        let x = self.post_quant_conv.forward_valid(&z.narrow(1, i, 1)?, 1)?;
        let y = unpatchify(&self.decoder.decode(&x, cache, i == 0)?)?;
        let y = swap_ct(&y)?.to_dtype(DType::F32)?;
        if clamp {
            y.clamp(-1f32, 1f32)
        } else {
            Ok(y)
        }
    }

    /// Raw latents [B, z_dim, T, h, w] to video [B, 3, 1 + 4(T-1), 16h, 16w]
    /// (f32), one latent frame at a time; `each` gets every chunk as it is done.
    pub fn decode_each(
        &self,
        z: &Tensor,
        clamp: bool,
        each: &mut dyn FnMut(usize, Tensor) -> Result<()>,
    ) -> Result<()> {
        let (_, c, t, h, w) = z.dims5()?;
        if c != self.cfg.z_dim || t == 0 || h == 0 || w == 0 {
            candle_core::bail!(
                "wan 2.2 vae decode: latent {:?} does not fit [B, {}, T>=1, H>=1, W>=1]",
                z.dims(),
                self.cfg.z_dim
            )
        }
        let z = swap_ct(&z.to_device(&self.device)?.to_dtype(self.dtype)?)?;
        let mut cache = FeatCache::new();
        for i in 0..t {
            each(i, self.decode_frame(&z, i, &mut cache, clamp)?)?;
        }
        Ok(())
    }

    /// [`Wan22Vae::decode_each`], concatenated.
    pub fn decode(&self, z: &Tensor, clamp: bool) -> Result<Tensor> {
        let mut parts = Vec::new();
        self.decode_each(z, clamp, &mut |_, t| {
            parts.push(t);
            Ok(())
        })?;
        Tensor::cat(&parts, 2)
    }

    /// Video [B, 3, 1 + 4k, H, W] in [-1, 1] (H, W multiples of 16) to the
    /// raw latent mean [B, z_dim, 1 + k, H/16, W/16], f32.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        let (_, c, t, h, w) = video.dims5()?;
        let (tf, sf) = (self.cfg.temporal_factor(), self.cfg.spatial_factor());
        if c != 3 || t == 0 || (t - 1) % tf != 0 || h % sf != 0 || w % sf != 0 || h == 0 || w == 0 {
            candle_core::bail!(
                "wan 2.2 vae encode: video {:?} does not fit [B, 3, 1 + {tf}k, H, W] with H, W multiples of {sf}",
                video.dims()
            )
        }
        let x = patchify(&swap_ct(
            &video.to_device(&self.device)?.to_dtype(self.dtype)?,
        )?)?;
        let mut cache = FeatCache::new();
        let mut outs = Vec::new();
        let mut start = 0;
        while start < t {
            let n = if start == 0 { 1 } else { tf };
            cache.begin_chunk();
            outs.push(self.encoder.encode(&x.narrow(1, start, n)?, &mut cache)?);
            start += n;
        }
        let out = self.quant_conv.forward_valid(&Tensor::cat(&outs, 1)?, 1)?;
        swap_ct(&out.narrow(2, 0, self.cfg.z_dim)?)?.to_dtype(DType::F32)
    }
}
