//! `bench device`'s speed sections, and the bounds `scripts/device_check.sh`
//! holds a card to.
//!
//! - a bf16 GEMM's TFLOP/s (cuBLAS on a card): the yardstick attention is
//!   measured against, in the same process;
//! - attention's TFLOP/s through the path [`attention`] takes on the device,
//!   and that path against the query-chunked reference at 4,096 tokens;
//! - one block of the 14B expert (Wan 2.2 A14B dimensions) at real token
//!   counts (32,760 = 480p x 81 frames, 75,600 = 720p x 81), its weights
//!   held in bf16 and in fp8.
//!
//! The figures land in [`Figures`]; [`check_bounds`] turns them into table
//! rows that read FAILED when a bound is missed, and a FAILED row makes the
//! bench (and so the device check) exit non-zero.

use super::device_table::{path_str, temp_file, used_now, PeakMeter, Table};
use super::load::write_checkpoint_seeded;
use super::median;
use crate::models::wan::dit::{attention, attention_chunked, attention_score_cap_on, matmul_dtype};
use crate::models::wan::WanConfig;
use crate::runtime::size::mib;
use crate::runtime::{LoadOptions, Runtime};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// The 14B expert's dimensions (Wan 2.2 T2V-A14B) with `layers` blocks.
pub(super) fn a14b_config(layers: usize) -> WanConfig {
    WanConfig {
        num_layers: layers,
        ..WanConfig::wan22_t2v_a14b()
    }
}

/// What the speed sections measured; `None` where a section did not run
/// (or failed, which its own row says).
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub gemm_tflops: Option<f64>,
    pub attention_tflops: Option<f64>,
    /// (tokens, seconds) of one 14B-dimension block, weights in bf16.
    pub block_bf16: Vec<(usize, f64)>,
    /// The same with the weights held in fp8.
    pub block_fp8: Vec<(usize, f64)>,
    pub load_gbps: Option<f64>,
}

/// The acceptance bounds of a card (issue "As fast as the card allows").
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Seconds one bf16 14B block may take at `block_tokens`.
    pub block_secs: f64,
    pub block_tokens: usize,
    /// Attention TFLOP/s as a share of the same run's GEMM TFLOP/s, at least.
    pub attention_share: f64,
    /// The fp8 block's time over the bf16 block's, at most.
    pub fp8_over_bf16: f64,
    /// `load_model` from the page cache to the device, GB/s, at least.
    pub load_gbps: f64,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            block_secs: 0.6,
            block_tokens: 75_600,
            attention_share: 0.5,
            fp8_over_bf16: 1.1,
            load_gbps: 8.0,
        }
    }
}

/// One row per bound: (what, figure, verdict). A bound whose figure was not
/// measured is a failure too: a check that silently did not run proves
/// nothing.
pub fn check_bounds(f: &Figures, b: &Bounds) -> Vec<(String, String, String)> {
    let verdict = |ok: bool, need: String| {
        if ok {
            format!("ok ({need})")
        } else {
            format!("FAILED (needs {need})")
        }
    };
    let missing = |what: &str| {
        (
            format!("bound: {what}"),
            "not measured".to_string(),
            "FAILED (the section did not run)".to_string(),
        )
    };
    let mut rows = Vec::new();
    let bf16_at = |t: usize| f.block_bf16.iter().find(|b| b.0 == t).map(|b| b.1);
    let what = format!("bf16 14B block at {} tokens", b.block_tokens);
    rows.push(match bf16_at(b.block_tokens) {
        Some(s) => (
            format!("bound: {what}"),
            format!("{s:.3} s"),
            verdict(s <= b.block_secs, format!("<= {} s", b.block_secs)),
        ),
        None => missing(&what),
    });
    rows.push(match (f.attention_tflops, f.gemm_tflops) {
        (Some(a), Some(g)) if g > 0.0 => (
            "bound: attention vs bf16 GEMM".to_string(),
            format!("{:.0}%", 100.0 * a / g),
            verdict(
                a >= b.attention_share * g,
                format!(">= {:.0}%", 100.0 * b.attention_share),
            ),
        ),
        _ => missing("attention vs bf16 GEMM"),
    });
    let pairs: Vec<(usize, f64, f64)> = f
        .block_fp8
        .iter()
        .filter_map(|&(t, s8)| bf16_at(t).map(|s16| (t, s8, s16)))
        .collect();
    if pairs.is_empty() {
        rows.push(missing("fp8 block vs bf16 block"));
    }
    for (t, s8, s16) in pairs {
        rows.push((
            format!("bound: fp8 block vs bf16 block at {t} tokens"),
            format!("{:.2}x", s8 / s16),
            verdict(
                s8 <= b.fp8_over_bf16 * s16,
                format!("<= {}x", b.fp8_over_bf16),
            ),
        ));
    }
    rows.push(match f.load_gbps {
        Some(g) => (
            "bound: load_model page cache -> device".to_string(),
            format!("{g:.2} GB/s"),
            verdict(g >= b.load_gbps, format!(">= {} GB/s", b.load_gbps)),
        ),
        None => missing("load_model page cache -> device"),
    });
    rows
}

/// Median seconds of `repeats` runs of `f` after one warm-up, the device
/// synchronised around each.
fn timed(
    dev: &Device,
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    f()?;
    dev.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        let t0 = Instant::now();
        f()?;
        dev.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// A square GEMM of side `n` in bf16 (the CPU's matmul dtype there): TFLOP/s.
pub(super) fn gemm(dev: &Device, n: usize, repeats: usize, t: &mut Table) -> anyhow::Result<f64> {
    let dtype = matmul_dtype(DType::BF16, dev);
    let a = Tensor::randn(0f32, 1.0, (n, n), dev)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), dev)?.to_dtype(dtype)?;
    let s = timed(dev, repeats, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    let tflops = 2.0 * (n as f64).powi(3) / s / 1e12;
    t.row(
        format!("GEMM {n}x{n}x{n}, {}", crate::dtype::label(dtype)),
        format!("{tflops:.3} TFLOP/s"),
        format!("{:.2} ms, median of {}", s * 1e3, repeats.max(1)),
    );
    Ok(tflops)
}

/// Attention of 40 heads x 128 at `tokens` (self-attention, 14B dims):
/// TFLOP/s counting the two products (4 N^2 d per head).
pub(super) fn attention_speed(
    dev: &Device,
    tokens: usize,
    repeats: usize,
    t: &mut Table,
) -> anyhow::Result<f64> {
    let (h, d) = (40usize, 128usize);
    let dtype = matmul_dtype(DType::BF16, dev);
    let qkv = || -> candle_core::Result<Tensor> {
        Tensor::randn(0f32, 1.0, (1, h, tokens, d), dev)?.to_dtype(dtype)
    };
    let (q, k, v) = (qkv()?, qkv()?, qkv()?);
    let s = timed(dev, repeats, || {
        attention(&q, &k, &v)?;
        Ok(())
    })?;
    let tflops = 4.0 * h as f64 * (tokens as f64).powi(2) * d as f64 / s / 1e12;
    t.row(
        format!(
            "attention, 40 heads x 128, {tokens} tokens, {}",
            crate::dtype::label(dtype)
        ),
        format!("{tflops:.3} TFLOP/s"),
        format!("{:.1} ms; {}", s * 1e3, attention_path(dev)),
    );
    Ok(tflops)
}

/// Which attention runs on `dev` for the 14B expert's bf16 heads, for the
/// table.
pub fn attention_path(dev: &Device) -> String {
    #[cfg(feature = "cuda")]
    if crate::models::wan::flash_cuda::takes(DType::BF16, 128, dev) {
        return "fused NVRTC kernel (tensor cores)".into();
    }
    if dev.is_cpu() {
        "fused tiled kernel (CPU)".into()
    } else {
        format!(
            "query-chunked, score cap {}",
            mib(attention_score_cap_on(dev) as u64)
        )
    }
}

/// [`attention`] against the chunked reference at `tokens` (8 heads x 128):
/// relative L2, bounded by `tol`.
pub(super) fn attention_parity(
    dev: &Device,
    tokens: usize,
    tol: f64,
    t: &mut Table,
) -> anyhow::Result<()> {
    let dtype = matmul_dtype(DType::BF16, dev);
    let qkv = |seed: f64| -> candle_core::Result<Tensor> {
        (Tensor::randn(0f32, 1.0, (1, 8, tokens, 128), dev)? * seed)?.to_dtype(dtype)
    };
    let (q, k, v) = (qkv(1.0)?, qkv(1.0)?, qkv(1.0)?);
    let got = attention(&q, &k, &v)?.to_dtype(DType::F32)?;
    let want = attention_chunked(&q, &k, &v, 64 << 20)?.to_dtype(DType::F32)?;
    let err = ((&got - &want)?.sqr()?.sum_all()?.sqrt()? / want.sqr()?.sum_all()?.sqrt()?)?
        .to_scalar::<f32>()? as f64;
    t.row(
        format!(
            "attention vs chunked reference, {tokens} tokens, {}",
            crate::dtype::label(dtype)
        ),
        format!("{err:.2e}"),
        format!(
            "rel L2, bound {tol:.0e}: {}",
            if err <= tol { "ok" } else { "FAILED" }
        ),
    );
    Ok(())
}

/// A one-block 14B checkpoint in `dir`: bf16, or its block matrices as fp8
/// with a per-tensor scale (ComfyUI's `scale_weight` encoding).
fn block_checkpoint(dir: &Path, fp8: bool) -> anyhow::Result<super::load::TempFile> {
    let cfg = a14b_config(1);
    let bf16 = temp_file(dir, "a14b");
    write_checkpoint_seeded(&bf16.0, &cfg, 3)?;
    if !fp8 {
        return Ok(bf16);
    }
    let mut out = HashMap::new();
    for (k, w) in candle_core::safetensors::load(&bf16.0, &Device::Cpu)? {
        if !(k.starts_with("blocks.") && k.ends_with(".weight") && w.rank() == 2) {
            out.insert(k, w);
            continue;
        }
        let w = w.to_dtype(DType::F32)?;
        let scale = w.abs()?.max_all()?.to_scalar::<f32>()? / 448.0;
        let stem = k.strip_suffix(".weight").unwrap_or(&k).to_string();
        out.insert(
            format!("{stem}.scale_weight"),
            Tensor::new(&[scale], &Device::Cpu)?,
        );
        out.insert(k, (w / scale as f64)?.to_dtype(DType::F8E4M3)?);
    }
    out.insert(
        "scaled_fp8".into(),
        Tensor::zeros(0, DType::F8E4M3, &Device::Cpu)?,
    );
    let file = temp_file(dir, "a14b-fp8");
    candle_core::safetensors::save(&out, &file.0)?;
    Ok(file)
}

/// The patch grid of about `n` tokens: 21 latent frames (81 video frames)
/// of h x w patches at 16:9 (75,600 = 21 x 45 x 80 exactly, 32,760 = 21 x
/// 30 x 52).
fn block_grid(n: usize) -> (usize, usize, usize) {
    let frames = 21usize;
    let per_frame = (n / frames).max(1);
    let h = ((per_frame as f64 * 9.0 / 16.0).sqrt().round() as usize).max(1);
    (frames, h, (per_frame / h).max(1))
}

/// One forward of a one-block model with the 14B expert's dimensions at
/// each of `tokens`, weights held in bf16 or fp8: seconds per token count,
/// with the peak memory above the weights beside the activation formula.
pub(super) fn blocks(
    dev: &Device,
    dir: &Path,
    tokens: &[usize],
    fp8: bool,
    repeats: usize,
    t: &mut Table,
) -> anyhow::Result<Vec<(usize, f64)>> {
    let cfg = a14b_config(1);
    let file = block_checkpoint(dir, fp8)?;
    let held = if fp8 { DType::F8E4M3 } else { DType::BF16 };
    let opts = LoadOptions {
        dtype: Some(held),
        ..Default::default()
    };
    let base = used_now(dev);
    let mut rt = Runtime::new(dev.clone(), None);
    let m = rt.load_model(&path_str(&file.0), &opts, "bench")?;
    let weights = rt.ledger().used();
    let ctx = (Tensor::randn(0f32, 1.0, (1, 512, 4096), &Device::Cpu)? * 0.1)?;
    let tt = Tensor::new(&[700f32], &Device::Cpu)?;
    let mut out = Vec::new();
    for &n in tokens {
        let (frames, h, w) = block_grid(n);
        let x = Tensor::randn(0f32, 1.0, (1, 16, frames, 2 * h, 2 * w), &Device::Cpu)?;
        let n = frames * h * w;
        let meter = PeakMeter::start(dev);
        let mut finite = true;
        let secs = timed(dev, repeats, || {
            let y = rt.predict(m, &x, &tt, &ctx)?;
            finite &= y
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?
                .is_finite();
            Ok(())
        })?;
        let peak = meter
            .finish(dev)
            .saturating_sub(if dev.is_cuda() { base } else { 0 });
        let formula = crate::models::wan::memory::activation_peak_bytes_on(
            &cfg,
            n,
            512,
            DType::BF16,
            dev,
            false,
            attention_score_cap_on(dev),
        );
        t.row(
            format!(
                "14B block, {n} tokens, weights {}",
                crate::dtype::label(held)
            ),
            format!("{secs:.3} s"),
            format!(
                "{}; peak {} above weights ({}), formula {}{}",
                attention_path(dev),
                mib(peak.saturating_sub(weights)),
                mib(weights),
                mib(formula),
                if finite {
                    ""
                } else {
                    "; output not finite: FAILED"
                }
            ),
        );
        out.push((n, secs));
    }
    Ok(out)
}

/// The whole 14B expert (40 blocks, random bf16 weights written to `dir`,
/// about 28 GB) stepping once at 480p x 81 frames (32,760 tokens) with
/// classifier-free guidance: two model calls, seconds per step. The
/// official Wan 2.2 code on one H100 takes about 8.2 s per step at 480p and
/// 26 s at 720p (T2V-A14B, 40 steps, with its model offload).
pub(super) fn full_expert(dev: &Device, dir: &Path, t: &mut Table) -> anyhow::Result<f64> {
    let cfg = a14b_config(40);
    let file = temp_file(dir, "a14b-full");
    let t0 = Instant::now();
    let bytes = write_checkpoint_seeded(&file.0, &cfg, 5)?;
    let write_s = t0.elapsed().as_secs_f64();
    let mut rt = Runtime::new(dev.clone(), None);
    let t0 = Instant::now();
    let m = rt.load_model(
        &path_str(&file.0),
        &LoadOptions {
            dtype: Some(DType::BF16),
            ..Default::default()
        },
        "bench",
    )?;
    dev.synchronize()?;
    let load_s = t0.elapsed().as_secs_f64();
    let offloaded = rt.ledger().get(m).map_or(0, |e| e.offloaded);
    let (frames, h, w) = block_grid(32_760);
    let x = Tensor::randn(0f32, 1.0, (1, 16, frames, 2 * h, 2 * w), &Device::Cpu)?;
    let ctx = (Tensor::randn(0f32, 1.0, (1, 512, 4096), &Device::Cpu)? * 0.1)?;
    let tt = Tensor::new(&[700f32], &Device::Cpu)?;
    // One step with CFG: the conditional and the unconditional call.
    let s = timed(dev, 1, || {
        rt.predict(m, &x, &tt, &ctx)?;
        rt.predict(m, &x, &tt, &ctx)?;
        Ok(())
    })?;
    t.row(
        "14B expert (40 blocks, bf16), 480p x 81, one CFG step",
        format!("{s:.2} s"),
        format!(
            "official Wan 2.2 on one H100: ~8.2 s/step at 480p; {} written in {write_s:.0} s, loaded in {load_s:.1} s ({:.2} GB/s), {} streamed",
            mib(bytes),
            bytes as f64 / load_s / 1e9,
            mib(offloaded)
        ),
    );
    Ok(s)
}

/// The Wan 2.1 VAE at its real widths (seeded random weights, written to
/// `dir` in f32 and loaded as `load_model` loads it: bf16 on a card, f32 on
/// the CPU) decoding a latent of `(frames, h, w)`: seconds per decode.
pub(super) fn vae_decode(
    dev: &Device,
    dir: &Path,
    (frames, h, w): (usize, usize, usize),
    repeats: usize,
    t: &mut Table,
) -> anyhow::Result<f64> {
    use crate::runtime::vae::{self, AnyVae};
    let file = temp_file(dir, "vae21");
    let cfg = crate::models::wan_vae::WanVaeConfig::wan21();
    candle_core::safetensors::save(&super::speed_vae::random_vae_tensors(&cfg)?, &file.0)?;
    let header = crate::checkpoint::header::Header::read(&file.0)?;
    let planned = vae::plan(&header, Some(DType::BF16), dev)?;
    let dtype = planned.info.dtype;
    let AnyVae::V21(m) = vae::load(&header, &planned, dev).map_err(anyhow::Error::msg)? else {
        anyhow::bail!("{}: not loaded as a Wan 2.1 VAE", file.0.display());
    };
    let z = Tensor::randn(0f32, 1.0, (1, 16, frames, h, w), dev)?.to_dtype(dtype)?;
    // Fewer repeats for the long decode: one is minutes on a CPU.
    let s = timed(dev, repeats.min(2), || {
        m.decode(&z)?;
        Ok(())
    })?;
    t.row(
        format!(
            "Wan 2.1 VAE decode, latent [1,16,{frames},{h},{w}] -> {}x{}x{}, {dtype:?}",
            1 + 4 * (frames - 1),
            8 * h,
            8 * w
        ),
        format!("{s:.2} s"),
        "real widths, random weights, median".to_string(),
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Figures {
        Figures {
            gemm_tflops: Some(600.0),
            attention_tflops: Some(350.0),
            block_bf16: vec![(32_760, 0.15), (75_600, 0.55)],
            block_fp8: vec![(32_760, 0.16), (75_600, 0.58)],
            load_gbps: Some(9.5),
        }
    }

    fn failed(rows: &[(String, String, String)]) -> Vec<String> {
        rows.iter()
            .filter(|r| r.2.starts_with("FAILED"))
            .map(|r| r.0.clone())
            .collect()
    }

    #[test]
    fn figures_within_bounds_pass() {
        let rows = check_bounds(&figures(), &Bounds::default());
        assert!(failed(&rows).is_empty(), "{rows:?}");
        // One row per bound, the fp8 bound per token count.
        assert_eq!(rows.len(), 5, "{rows:?}");
    }

    #[test]
    fn each_missed_bound_fails_by_name() {
        let b = Bounds::default();
        let mut f = figures();
        f.block_bf16[1].1 = 6.19;
        assert_eq!(
            failed(&check_bounds(&f, &b)),
            ["bound: bf16 14B block at 75600 tokens"]
        );
        let mut f = figures();
        f.attention_tflops = Some(200.0);
        assert_eq!(
            failed(&check_bounds(&f, &b)),
            ["bound: attention vs bf16 GEMM"]
        );
        let mut f = figures();
        f.block_fp8[0].1 = 0.2;
        assert_eq!(
            failed(&check_bounds(&f, &b)),
            ["bound: fp8 block vs bf16 block at 32760 tokens"]
        );
        let mut f = figures();
        f.load_gbps = Some(1.85);
        assert_eq!(
            failed(&check_bounds(&f, &b)),
            ["bound: load_model page cache -> device"]
        );
    }

    #[test]
    fn an_unmeasured_bound_is_a_failure() {
        let rows = check_bounds(&Figures::default(), &Bounds::default());
        assert_eq!(failed(&rows).len(), 4, "{rows:?}");
    }

    #[test]
    fn block_latents_have_the_real_token_counts() {
        assert_eq!(block_grid(75_600), (21, 45, 80));
        assert_eq!(block_grid(32_760), (21, 30, 52));
        let (f, h, w) = block_grid(256);
        assert!(f * h * w > 0 && f * h * w <= 256);
    }
}
