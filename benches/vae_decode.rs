//! Wan 2.1 VAE decode speed and memory on the CPU, run by hand:
//!
//! ```text
//! cargo bench --bench vae_decode -- decode [DIM] [T] [H] [W]   # one decode, time + peak RSS
//! cargo bench --bench vae_decode -- sweep [DIM] [H] [W]        # peak RSS vs latent frames
//! cargo bench --bench vae_decode -- conv                       # conv3d lowering comparison
//! ```
//!
//! Weights are random (fan-in scaled) in the real Wan 2.1 structure at base
//! width DIM (real: 96). Peak RSS is VmHWM from /proc/self/status; each sweep
//! point runs in its own process so the high-water marks are independent.
//!
//! Measured on the 2-core AMD EPYC dev box (shared, f32, base width 16):
//!
//! `cargo bench --bench vae_decode -- sweep 16 15 26`
//!
//! | latent | video | decode s | s/latent frame | peak RSS MiB | feat cache MiB |
//! |---|---|---|---|---|---|
//! | 16x1x15x26 | 1x120x208 | 1.1 | 1.09 | 108 | 36.6 |
//! | 16x5x15x26 | 17x120x208 | 13.3 | 2.67 | 230 | 37.6 |
//! | 16x11x15x26 | 41x120x208 | 30.5 | 2.77 | 232 | 37.6 |
//! | 16x21x15x26 | 81x120x208 | 85.4 | 4.07 | 237 | 37.6 |
//!
//! Peak RSS is flat in the number of frames (the output chunks are dropped as
//! they stream). At the real latent size, `decode 16 2 60 104` (5x480x832)
//! took 127.5 s (about 110 s for the 4-frame chunk) with 2682 MiB peak RSS and
//! a 601 MiB feature cache, so a full 16x21x60x104 decode at width 16 would
//! take roughly 35-40 minutes here and was not run. At base width 4 (the
//! fixture's), `decode 4 21 60 104` (the full 81x480x832) took 446.5 s
//! (21.3 s per latent frame, cores shared with compile jobs) with 978 MiB peak
//! RSS, of which the output video is 389 MiB, and a 150.8 MiB feature cache. The feature cache holds
//! two frames per causal conv at each resolution, and scales with width: about
//! 3.6 GiB for the real width-96 model at 480x832.
use std::collections::HashMap;
use std::time::Instant;

use baton::models::wan_vae::conv::{CausalConv3d, Conv3dImpl, Slot};
use baton::models::wan_vae::{WanVae, WanVaeConfig};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn random_vae(dim: usize) -> Result<WanVae> {
    let cfg = WanVaeConfig::wan21_width(dim);
    let dev = Device::Cpu;
    let mut ts = HashMap::new();
    for (k, shape) in cfg.expected_shapes() {
        let t = if k.ends_with("gamma") {
            Tensor::ones(shape, DType::F32, &dev)?
        } else if k.ends_with("bias") {
            Tensor::randn(0f32, 0.02, shape, &dev)?
        } else {
            let fan_in: usize = shape[1..].iter().product();
            Tensor::randn(0f32, (1.0 / fan_in as f64).sqrt() as f32, shape, &dev)?
        };
        ts.insert(k, t);
    }
    WanVae::new(&cfg, VarBuilder::from_tensors(ts, DType::F32, &dev))
}

fn arg(args: &[String], i: usize, default: usize) -> usize {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// One decode; prints a table row. Returns nothing: the parent parses stdout.
fn decode(dim: usize, t: usize, h: usize, w: usize) -> Result<()> {
    let vae = random_vae(dim)?;
    let rss_model = status_kb("VmRSS:");
    let z = Tensor::randn(0f32, 1.0, (1, 16, t, h, w), &Device::Cpu)?;
    let start = Instant::now();
    let mut frames = 0;
    let mut max_cache = 0;
    let mut chunks = vae.decode_chunks(&z, true)?;
    let mut first = None;
    // Stream: drop each chunk after looking at it, as a video writer would.
    while let Some(c) = chunks.next() {
        let c = c?;
        frames += c.dim(2)?;
        max_cache = max_cache.max(chunks.cache_bytes());
        if first.is_none() {
            first = Some(start.elapsed().as_secs_f64());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "| {dim} | 16x{t}x{h}x{w} | {frames}x{}x{} | {secs:.1} | {:.2} | {:.0} | {:.0} | {:.1} |",
        8 * h,
        8 * w,
        secs / t as f64,
        rss_model as f64 / 1024.0,
        status_kb("VmHWM:") as f64 / 1024.0,
        max_cache as f64 / (1 << 20) as f64,
    );
    Ok(())
}

fn header() {
    println!("| base dim | latent | video | decode s | s/latent frame | RSS after load MiB | peak RSS MiB | feat cache MiB |");
    println!("|---|---|---|---|---|---|---|---|");
}

fn sweep(dim: usize, h: usize, w: usize) {
    header();
    let exe = std::env::current_exe().expect("current exe");
    for t in [1, 5, 11, 21] {
        let out = std::process::Command::new(&exe)
            .args([
                "decode",
                &dim.to_string(),
                &t.to_string(),
                &h.to_string(),
                &w.to_string(),
                "--no-header",
            ])
            .output()
            .expect("run child");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn time_conv(conv: &CausalConv3d, x: &Tensor) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let y = conv.forward_cached(x, &mut Slot::Fresh)?;
        y.sum_all()?.to_scalar::<f32>()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[1])
}

fn conv() -> Result<()> {
    let dev = Device::Cpu;
    println!("| layer | per-tap s | folded s |");
    println!("|---|---|---|");
    for (c, o, t, h, w, what) in [
        (96, 96, 4, 120, 208, "decoder last stage, 1/4 spatial"),
        (192, 192, 4, 120, 208, "decoder stage 3 (real size)"),
        (384, 384, 1, 60, 104, "decoder middle (real size)"),
        (16, 16, 4, 240, 416, "width-16 VAE, stage 4 (half spatial)"),
    ] {
        let wt = Tensor::randn(0f32, 0.02, (o, c, 3, 3, 3), &dev)?;
        let b = Tensor::zeros(o, DType::F32, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (1, t, c, h, w), &dev)?;
        let per_tap = CausalConv3d::from_weights(wt.clone(), b.clone(), Conv3dImpl::PerTap)?;
        let folded = CausalConv3d::from_weights(wt, b, Conv3dImpl::Folded)?;
        let a = time_conv(&per_tap, &x)?;
        let f = time_conv(&folded, &x)?;
        let diff = (per_tap.forward(&x)? - folded.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-3, "lowerings disagree by {diff}");
        println!("| {c}->{o}, {t}x{h}x{w} ({what}) | {a:.2} | {f:.2} |");
    }
    Ok(())
}

fn main() -> Result<()> {
    // `cargo bench` appends `--bench`; ignore flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--") || a == "--no-header")
        .collect();
    let no_header = args.iter().any(|a| a == "--no-header");
    let args: Vec<String> = args.into_iter().filter(|a| a != "--no-header").collect();
    match args.first().map(String::as_str).unwrap_or("decode") {
        "decode" => {
            if !no_header {
                header();
            }
            decode(
                arg(&args, 1, 16),
                arg(&args, 2, 21),
                arg(&args, 3, 60),
                arg(&args, 4, 104),
            )
        }
        "sweep" => {
            sweep(arg(&args, 1, 16), arg(&args, 2, 30), arg(&args, 3, 52));
            Ok(())
        }
        "conv" => conv(),
        other => {
            eprintln!("unknown mode {other}: decode | sweep | conv");
            Ok(())
        }
    }
}
