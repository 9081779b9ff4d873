//! `baton bench device`: the figures that make the memory promises facts on
//! a real card, measured in one process on the session's device.
//!
//! - host-to-device bandwidth from pinned memory, and `load_model` of a
//!   page-cached checkpoint onto the device;
//! - `delete_model` against the driver: free memory back to its baseline;
//! - the two-expert pipeline's peak device memory, sequential against both
//!   loaded;
//! - forward time resident against half the blocks streamed (pinned, on the
//!   copy stream, with and without read-ahead);
//! - the swap: delete one expert, load the other, first step;
//! - one forward at 75,600 tokens (720p x 81 frames) with the 14B model's
//!   block dimensions: the query-chunked attention's time and peak memory,
//!   against the activation formula.
//!
//! On a card, memory figures are the driver's (`cuMemGetInfo`, polled every
//! half millisecond for peaks, above the session's baseline); on the CPU the
//! same code runs with RSS in their place, as a dry run of the script that
//! carries this to a GPU machine (`scripts/device_check.sh`).

use super::device_speed::{check_bounds, Bounds, Figures};
use super::device_table::{path_str, temp_file, used_now, PeakMeter, Table};
use super::load::{block_params, write_checkpoint_seeded};
use super::{median, swap_secs, two_expert_pipeline, Pipeline};
use crate::models::wan::WanConfig;
use crate::runtime::device::{driver_memory, label};
use crate::runtime::placement::stream_buffers;
use crate::runtime::size::mib;
use crate::runtime::{memstat, LoadOptions, Runtime};
use candle_core::{DType, Device, Tensor};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct DeviceBenchOptions {
    /// Size of each of the two bench experts, in GB (bf16, Wan 1.3B block
    /// dimensions, as many blocks as it takes).
    pub size_gb: f64,
    /// Latent of the forwards and samples, and timed repeats.
    pub latent: super::LatentOptions,
    /// Token counts of the 14B-dimension block forwards (bf16 and fp8);
    /// empty skips them.
    pub block_tokens: Vec<usize>,
    /// Tokens of the attention speed and parity cases (0 skips them).
    pub attention_tokens: usize,
    /// Also step the whole 14B expert once at 480p (writes ~28 GB to `dir`).
    pub full_expert: bool,
    /// Latent (frames, height, width) of the Wan 2.1 VAE decode row; `None`
    /// skips it.
    pub vae_latent: Option<(usize, usize, usize)>,
    /// Hold the figures to the card's bounds ([`Bounds`]): a missed one is
    /// a FAILED row and a non-zero exit.
    pub bounds: bool,
    pub dir: Option<PathBuf>,
}

/// Wan 2.1 T2V-1.3B block dimensions with `layers` blocks.
fn expert_config(layers: usize) -> WanConfig {
    WanConfig {
        dim: 1536,
        ffn_dim: 8960,
        freq_dim: 256,
        text_dim: 4096,
        in_dim: 16,
        out_dim: 16,
        num_heads: 12,
        num_layers: layers.max(2),
        patch_size: [1, 2, 2],
        eps: 1e-6,
        rope_theta: 10000.0,
    }
}

struct Inputs {
    x: Tensor,
    t: Tensor,
    ctx: Tensor,
    tokens: usize,
}

fn inputs(width: usize, height: usize, frames: usize, context: usize) -> anyhow::Result<Inputs> {
    let latent = [1, 16, (frames.max(1) - 1) / 4 + 1, height / 8, width / 8];
    let tokens = latent[2] * (latent[3] / 2) * (latent[4] / 2);
    Ok(Inputs {
        x: Tensor::randn(0f32, 1.0, &latent, &Device::Cpu)?,
        t: Tensor::new(&[700f32], &Device::Cpu)?,
        ctx: (Tensor::randn(0f32, 1.0, (1, context, 4096), &Device::Cpu)? * 0.1)?,
        tokens,
    })
}

/// Everything the sections share.
struct Ctx<'a> {
    o: &'a DeviceBenchOptions,
    dev: &'a Device,
    cfg: WanConfig,
    bytes: u64,
    high: String,
    low: String,
    i: Inputs,
    unit: &'static str,
}

/// Runs one section; a failure becomes a FAILED row and the rest still run,
/// so one broken kernel does not cost the whole table (device time is scarce).
fn section(t: &mut Table, name: &str, f: impl FnOnce(&mut Table) -> anyhow::Result<()>) {
    if let Err(e) = f(t) {
        t.row(name, "FAILED", format!("{e:#}"));
    }
}

pub fn run(o: &DeviceBenchOptions, dev: &Device) -> anyhow::Result<String> {
    memstat::configure_allocator();
    let on_card = dev.is_cuda();
    let dir = o.dir.clone().unwrap_or_else(std::env::temp_dir);
    let cfg = {
        let per_block = 2 * block_params(&expert_config(1));
        expert_config(((o.size_gb * 1e9) as u64 / per_block) as usize)
    };
    let high = temp_file(&dir, "high");
    let low = temp_file(&dir, "low");
    let t0 = Instant::now();
    let bytes = write_checkpoint_seeded(&high.0, &cfg, 1)?;
    write_checkpoint_seeded(&low.0, &cfg, 2)?;
    let write_s = t0.elapsed().as_secs_f64();
    let c = Ctx {
        o,
        dev,
        cfg,
        bytes,
        high: path_str(&high.0),
        low: path_str(&low.0),
        i: inputs(
            o.latent.width,
            o.latent.height,
            o.latent.frames,
            o.latent.context_len,
        )?,
        unit: if on_card { "device (driver)" } else { "RSS" },
    };
    let mut out = String::new();
    writeln!(
        out,
        "baton bench device on {}: two bf16 experts of {} (Wan 1.3B blocks: dim {}, ffn {}, {} layers; \
         written in {write_s:.1} s), latent {:?} ({} tokens), context {}, medians of {} runs; memory is {}",
        label(dev),
        mib(bytes),
        c.cfg.dim,
        c.cfg.ffn_dim,
        c.cfg.num_layers,
        c.i.x.dims(),
        c.i.tokens,
        o.latent.context_len,
        o.latent.repeats.max(1),
        c.unit
    )?;
    if let Some(m) = driver_memory(dev) {
        writeln!(out, "driver: {} free of {}", mib(m.free), mib(m.total))?;
    }
    let mut t = Table::default();
    #[cfg(feature = "cuda")]
    if on_card {
        section(&mut t, "host->device copy, pinned", |t| {
            let gbps = crate::runtime::pinned::h2d_gbps(dev, 1 << 30, 3)?;
            t.row(
                "host->device copy, pinned",
                format!("{gbps:.1} GB/s"),
                "1 GiB on a second stream, best of 3",
            );
            Ok(())
        });
    }
    let mut figures = Figures::default();
    section(&mut t, "load and delete", |t| {
        figures.load_gbps = Some(load_and_delete(&c, t)?);
        Ok(())
    });
    for both in [true, false] {
        let name = if both {
            "two experts, both loaded"
        } else {
            "two experts, sequential"
        };
        section(&mut t, name, |t| two_experts(&c, both, t));
    }
    section(&mut t, "forwards", |t| forwards(&c, t));
    section(&mut t, "swap", |t| swap(&c, t));
    drop(high);
    drop(low);
    section(&mut t, "fp8_scaled on the device", |t| {
        fp8_parity(dev, &dir, t)
    });
    if o.attention_tokens > 0 {
        section(&mut t, "GEMM", |t| {
            let n = if on_card { 8192 } else { 1024 };
            figures.gemm_tflops = Some(super::device_speed::gemm(dev, n, o.latent.repeats, t)?);
            Ok(())
        });
        section(&mut t, "attention", |t| {
            let n = o.attention_tokens;
            figures.attention_tflops = Some(super::device_speed::attention_speed(
                dev,
                n,
                o.latent.repeats,
                t,
            )?);
            Ok(())
        });
        section(&mut t, "attention parity", |t| {
            // bf16 on a card (the fused kernel's dtype), f32 on the CPU.
            let tol = if on_card { 2e-3 } else { 1e-5 };
            super::device_speed::attention_parity(dev, o.attention_tokens.min(4096), tol, t)
        });
    }
    if o.block_tokens.is_empty() {
        t.row("14B block forwards", "skipped", "--block-tokens empty");
    }
    for fp8 in [false, true] {
        if o.block_tokens.is_empty() {
            break;
        }
        let name = if fp8 {
            "14B block, fp8"
        } else {
            "14B block, bf16"
        };
        section(&mut t, name, |t| {
            let r =
                super::device_speed::blocks(dev, &dir, &o.block_tokens, fp8, o.latent.repeats, t)?;
            if fp8 {
                figures.block_fp8 = r;
            } else {
                figures.block_bf16 = r;
            }
            Ok(())
        });
    }
    if o.full_expert {
        section(&mut t, "14B expert", |t| {
            super::device_speed::full_expert(dev, &dir, t).map(drop)
        });
    }
    if let Some(latent) = o.vae_latent {
        section(&mut t, "VAE decode", |t| {
            super::device_speed::vae_decode(dev, &dir, latent, o.latent.repeats, t).map(drop)
        });
    }
    if o.bounds {
        for (a, b, c) in check_bounds(&figures, &Bounds::default()) {
            t.row(a, b, c);
        }
    }
    out.push_str(&t.render());
    if t.any_failed() {
        print!("{out}");
        anyhow::bail!("a check on {} failed (see the table)", label(dev));
    }
    Ok(out)
}

/// The most `delete_model` may leave above the baseline (allocator pools,
/// a card's context): beyond it the delete did not free.
const DELETE_SLACK: u64 = 64 << 20;

/// Load GB/s from the page cache (returned), the ledger against the driver
/// (a leak is a failure), and delete back to the baseline (within
/// [`DELETE_SLACK`], else a failure).
fn load_and_delete(c: &Ctx, t: &mut Table) -> anyhow::Result<f64> {
    let dev = c.dev;
    super::load::sequential_read(Path::new(&c.high))?;
    let baseline = used_now(dev);
    let mut rt = Runtime::new(dev.clone(), None);
    let t0 = Instant::now();
    let h = rt.load_model(&c.high, &LoadOptions::default(), "bench")?;
    dev.synchronize()?;
    let load_s = t0.elapsed().as_secs_f64();
    t.row(
        "load_model, page cache -> device",
        format!("{:.2} GB/s", c.bytes as f64 / load_s / 1e9),
        format!("{} in {load_s:.2} s", mib(c.bytes)),
    );
    let loaded = used_now(dev);
    if let Some((_, check)) = rt.driver_check() {
        t.row(
            "after load: driver minus ledger",
            format!("{:+.1} MiB", check.gap as f64 / (1 << 20) as f64),
            format!(
                "driver shows {} held, ledger {}{}",
                mib(check.driver_held),
                mib(check.ledger),
                if check.leak { " (LEAK): FAILED" } else { "" }
            ),
        );
    }
    rt.predict(h, &c.i.x, &c.i.t, &c.i.ctx)?;
    rt.delete_model(h, "bench")?;
    let after = used_now(dev);
    let left = after.abs_diff(baseline);
    t.row(
        "delete_model: back to baseline",
        format!("{:+} bytes", after as i64 - baseline as i64),
        format!(
            "{} {} before load, {} loaded, {} after a forward and delete; bound +-{}: {}",
            c.unit,
            mib(baseline),
            mib(loaded),
            mib(after),
            mib(DELETE_SLACK),
            if left <= DELETE_SLACK { "ok" } else { "FAILED" }
        ),
    );
    Ok(c.bytes as f64 / load_s / 1e9)
}

/// Peak memory of high (2 steps) then low (2 steps), both loaded or one at
/// a time.
fn two_experts(c: &Ctx, both: bool, t: &mut Table) -> anyhow::Result<()> {
    let dev = c.dev;
    super::load::sequential_read(Path::new(&c.low))?;
    let base = used_now(dev);
    let mut rt = Runtime::new(dev.clone(), None);
    let meter = PeakMeter::start(dev);
    let how = if both {
        Pipeline::BothLoaded
    } else {
        Pipeline::Sequential
    };
    two_expert_pipeline(&mut rt, (&c.high, &c.low), how, &c.i.x, &c.i.ctx, 5.0)?;
    let peak = meter.finish(dev);
    let on_card = dev.is_cuda();
    t.row(
        format!(
            "two experts, {}: peak",
            if both { "both loaded" } else { "sequential" }
        ),
        mib(peak.saturating_sub(if on_card { base } else { 0 })),
        if on_card {
            "device memory above the session's start"
        } else {
            "peak RSS of the process"
        },
    );
    Ok(())
}

/// Forward time resident, and with half the blocks streamed with and
/// without read-ahead.
fn forwards(c: &Ctx, t: &mut Table) -> anyhow::Result<()> {
    let dev = c.dev;
    let mut resident_s = 0.0;
    for (case, streamed_pct, ahead) in [
        ("resident", 0usize, true),
        ("50% streamed, read-ahead", 50, true),
        ("50% streamed, no read-ahead", 50, false),
    ] {
        let block = 2 * block_params(&c.cfg);
        let n = c.cfg.num_layers * streamed_pct / 100;
        let budget = (n > 0)
            .then(|| c.bytes - n as u64 * block + stream_buffers(n, ahead) * block + (8 << 20));
        let mut rt = Runtime::new(dev.clone(), budget);
        let opts = LoadOptions {
            prefetch: ahead,
            ..Default::default()
        };
        let m = rt.load_model(&c.high, &opts, "bench")?;
        let offloaded = rt.ledger().get(m).map_or(0, |e| e.offloaded);
        let (x, tt, ctx) = (&c.i.x, &c.i.t, &c.i.ctx);
        rt.predict(m, x, tt, ctx)?; // warm-up
        let mut times = Vec::new();
        for _ in 0..c.o.latent.repeats.max(1) {
            let t0 = Instant::now();
            rt.predict(m, x, tt, ctx)?;
            dev.synchronize()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        let s = median(times);
        if streamed_pct == 0 {
            resident_s = s;
        }
        let note = if offloaded == 0 {
            "all blocks on the device".to_string()
        } else {
            format!(
                "{} streamed per forward ({:.0}% of the model), {:.1} GB/s effective, {:.2}x resident",
                mib(offloaded),
                100.0 * offloaded as f64 / c.bytes as f64,
                offloaded as f64 / s / 1e9,
                s / resident_s
            )
        };
        t.row(format!("forward, {case}"), format!("{s:.3} s"), note);
    }
    Ok(())
}

/// delete high + load low + one step, low prefetched while high sampled.
fn swap(c: &Ctx, t: &mut Table) -> anyhow::Result<()> {
    let mut rt = Runtime::new(c.dev.clone(), None);
    let s = swap_secs(&mut rt, (&c.high, &c.low), true, &c.i.x, &c.i.ctx, 5.0)?;
    t.row(
        "swap: delete high + load low + 1 step",
        format!("{s:.2} s"),
        "low prefetched into the page cache while high sampled",
    );
    Ok(())
}

/// The built-in tiny expert with every block linear quantised to fp8 (per
/// tensor scale, ComfyUI's legacy `scale_weight` encoding), loaded kept as
/// fp8 (`dtype: "fp8"`: dequantised per layer at forward time) and with the
/// automatic choice, each against the same weights dequantised in f32.
fn fp8_parity(dev: &Device, dir: &Path, t: &mut Table) -> anyhow::Result<()> {
    let src = crate::roots::builtin::materialise("wan-tiny-high").map_err(anyhow::Error::msg)?;
    let base = candle_core::safetensors::load(&src, &Device::Cpu)?;
    let (mut q, mut r) = (
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    );
    for (k, w) in base {
        if !(k.starts_with("blocks.") && k.ends_with(".weight") && w.rank() == 2) {
            q.insert(k.clone(), w.clone());
            r.insert(k, w);
            continue;
        }
        let scale = w.abs()?.max_all()?.to_scalar::<f32>()? / 448.0;
        let qw = (w / scale as f64)?.to_dtype(DType::F8E4M3)?;
        r.insert(k.clone(), (qw.to_dtype(DType::F32)? * scale as f64)?);
        let stem = k.strip_suffix(".weight").unwrap_or(&k);
        q.insert(
            format!("{stem}.scale_weight"),
            Tensor::new(&[scale], &Device::Cpu)?,
        );
        q.insert(k, qw);
    }
    q.insert(
        "scaled_fp8".into(),
        Tensor::zeros(0, DType::F8E4M3, &Device::Cpu)?,
    );
    let fp8 = temp_file(dir, "fp8");
    let reference = temp_file(dir, "ref");
    candle_core::safetensors::save(&q, &fp8.0)?;
    candle_core::safetensors::save(&r, &reference.0)?;
    let tiny = crate::roots::builtin::tiny_config();
    let i = inputs(64, 64, 5, 16)?;
    let mut rt = Runtime::new(dev.clone(), None);
    let load = |dtype| LoadOptions {
        dtype,
        heads: Some(tiny.num_heads),
        ..Default::default()
    };
    let m = rt.load_model(&path_str(&reference.0), &load(Some(DType::F32)), "bench")?;
    let want = rt.predict(m, &i.x, &i.t, &i.ctx)?;
    rt.delete_model(m, "bench")?;
    let whole = {
        let m = rt.load_model(&path_str(&fp8.0), &load(Some(DType::F8E4M3)), "bench")?;
        let bytes = rt.model_bytes(m)?;
        rt.delete_model(m, "bench")?;
        bytes
    };
    for (case, dtype, budget) in [
        ("kept as fp8", Some(DType::F8E4M3), None),
        (
            "kept as fp8, streamed",
            Some(DType::F8E4M3),
            Some(whole * 6 / 10),
        ),
        ("automatic", None, None),
    ] {
        rt.set_budget(budget.unwrap_or(u64::MAX / 4));
        let m = rt.load_model(&path_str(&fp8.0), &load(dtype), "bench")?;
        let offloaded = rt.ledger().get(m).map_or(0, |e| e.offloaded);
        let held = rt.model(m)?.info.dtype;
        let got = rt.predict(m, &i.x, &i.t, &i.ctx)?;
        let err = ((&got - &want)?.sqr()?.sum_all()?.sqrt()? / want.sqr()?.sum_all()?.sqrt()?)?
            .to_scalar::<f32>()?;
        // Kept as fp8 the linears run in the device's bf16 matmul dtype
        // (f32 on the CPU); bf16 rounding of activations bounds the error.
        let tol = if held == DType::F8E4M3 && !dev.is_cuda() {
            1e-4
        } else {
            2e-2
        };
        t.row(
            format!("fp8_scaled, {case}: rel L2 vs f32"),
            format!("{err:.2e}"),
            format!(
                "held as {} ({} on the device, {} streamed), tolerance {tol:.0e}: {}",
                crate::dtype::label(held),
                mib(rt.ledger().used()),
                mib(offloaded),
                if err <= tol { "ok" } else { "FAILED" }
            ),
        );
        rt.delete_model(m, "bench")?;
    }
    Ok(())
}
