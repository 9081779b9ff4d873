//! `baton bench`: the figures quoted in issues and notes, measured the same
//! way each time. Forward time of the built-in tiny expert (resident and
//! partially streamed), load and delete times, and what RSS does meanwhile.

use crate::runtime::memstat;
use crate::runtime::size::mib;
use crate::runtime::{LoadOptions, Runtime};
use candle_core::{Device, Tensor};
use std::fmt::Write;
use std::time::Instant;

/// The latent every bench runs its forwards and samples on, and how many
/// timed repeats each figure is the median of (`--width`, `--height`,
/// `--frames`, `--context`, `--repeats`).
#[derive(Debug, Clone)]
pub struct LatentOptions {
    /// Latent size in pixels and frames.
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    /// Text context length in tokens.
    pub context_len: usize,
    pub repeats: usize,
}

/// The median of timings (the middle one; the upper middle for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite timings"));
    v[v.len() / 2]
}

/// Steps `start..end` of a 4-step Euler pass with the given shift, no CFG:
/// the two-expert split the benches time (0..2 high, 2..4 low).
fn pass(ctx: &Tensor, shift: f32, start: usize, end: usize) -> crate::runtime::SampleOptions {
    use crate::sampling::ksampler::{KSampler, Sampler, Scheduler};
    crate::runtime::SampleOptions {
        positive: ctx.clone(),
        negative: None,
        image_cond: None,
        pass: KSampler {
            sampler: Sampler::parse("euler").expect("a built-in sampler"),
            scheduler: Scheduler::parse("simple").expect("a built-in scheduler"),
            steps: 4,
            shift,
            sigmas: None,
            start,
            end: Some(end),
            cfg: 1.0,
            seed: 42,
            add_noise: start == 0,
            leftover_noise: end < 4,
            noise: None,
            noise_mask: None,
        },
        state: None,
    }
}

/// How the two experts share memory in a bench pipeline.
#[derive(Clone, Copy, PartialEq)]
enum Pipeline {
    BothLoaded,
    Sequential,
    /// Sequential, with low read into the page cache while high samples.
    SequentialPrefetch,
}

/// High samples steps 0..2 of a 4-step pass, then low steps 2..4: low loaded
/// beside high from the start, or after high is deleted.
fn two_expert_pipeline(
    rt: &mut Runtime,
    (high, low): (&str, &str),
    how: Pipeline,
    x: &Tensor,
    ctx: &Tensor,
    shift: f32,
) -> anyhow::Result<()> {
    let o = LoadOptions::default();
    let mut none = |_: usize, _: usize, _: f32| {};
    let h = rt.load_model(high, &o, "bench")?;
    let l = if how == Pipeline::BothLoaded {
        Some(rt.load_model(low, &o, "bench")?)
    } else {
        None
    };
    if how == Pipeline::SequentialPrefetch {
        rt.prefetch_model(low, "bench")?;
    }
    let x = rt.sample(h, x, &pass(ctx, shift, 0, 2), &mut none, "bench")?;
    if how != Pipeline::BothLoaded {
        rt.delete_model(h, "bench")?;
    }
    let l = match l {
        Some(l) => l,
        None => rt.load_model(low, &o, "bench")?,
    };
    rt.sample(l, &x, &pass(ctx, shift, 2, 4), &mut none, "bench")?;
    Ok(())
}

/// The swap: after high samples steps 0..2 (with low prefetched into the
/// page cache meanwhile when `prefetch`), the seconds it takes to delete
/// high, load low and run low's first step.
fn swap_secs(
    rt: &mut Runtime,
    (high, low): (&str, &str),
    prefetch: bool,
    x: &Tensor,
    ctx: &Tensor,
    shift: f32,
) -> anyhow::Result<f64> {
    let o = LoadOptions::default();
    let mut none = |_: usize, _: usize, _: f32| {};
    let h = rt.load_model(high, &o, "bench")?;
    if prefetch {
        rt.prefetch_model(low, "bench")?;
    }
    let x = rt.sample(h, x, &pass(ctx, shift, 0, 2), &mut none, "bench")?;
    let t0 = Instant::now();
    rt.delete_model(h, "bench")?;
    let l = rt.load_model(low, &o, "bench")?;
    rt.sample(l, &x, &pass(ctx, shift, 2, 3), &mut none, "bench")?;
    rt.device.synchronize()?;
    Ok(t0.elapsed().as_secs_f64())
}

pub fn run(o: &LatentOptions) -> anyhow::Result<String> {
    let mut out = String::new();
    let latent = [1, 16, (o.frames - 1) / 4 + 1, o.height / 8, o.width / 8];
    let tokens = latent[2] * latent[3] / 2 * latent[4] / 2;
    let x = Tensor::randn(0f32, 1.0, &latent, &Device::Cpu)?;
    let ctx = Tensor::randn(0f32, 1.0, (1, o.context_len, 4096), &Device::Cpu)?;
    let t = Tensor::new(&[500f32], &Device::Cpu)?;
    writeln!(
        out,
        "baton bench: builtin:wan-tiny-high, latent {latent:?} ({tokens} tokens), context {} tokens, forwards: median of {} runs, {} threads",
        o.context_len,
        o.repeats,
        candle_core::utils::get_num_threads()
    )?;
    writeln!(out, "{:<34} {:>12} {:>14}", "what", "time", "rss after")?;
    for (label, budget) in [
        ("resident", None),
        ("partial (budget 80 MiB)", Some(80u64 << 20)),
    ] {
        let mut rt = Runtime::new(Device::Cpu, budget);
        let t0 = Instant::now();
        let id = rt.load_model("builtin:wan-tiny-high", &LoadOptions::default(), "bench")?;
        let load_s = t0.elapsed().as_secs_f64();
        let offloaded = rt.ledger().get(id).map_or(0, |e| e.offloaded);
        rt.predict(id, &x, &t, &ctx)?; // warm-up
        let times: Vec<f64> = (0..o.repeats)
            .map(|_| {
                let t0 = Instant::now();
                rt.predict(id, &x, &t, &ctx)
                    .map(|_| t0.elapsed().as_secs_f64())
            })
            .collect::<Result<_, _>>()?;
        let rss = memstat::rss();
        writeln!(
            out,
            "{:<34} {:>10.3} s {:>14}",
            format!("load, {label}"),
            load_s,
            mib(rss)
        )?;
        writeln!(
            out,
            "{:<34} {:>10.3} s {:>14}",
            format!("forward, {label}"),
            median(times),
            mib(rss)
        )?;
        if offloaded > 0 {
            writeln!(
                out,
                "{:<34} {:>12}",
                "  streamed per forward",
                mib(offloaded)
            )?;
        }
        let t0 = Instant::now();
        rt.delete_model(id, "bench")?;
        writeln!(
            out,
            "{:<34} {:>10.3} s {:>14}",
            format!("delete, {label}"),
            t0.elapsed().as_secs_f64(),
            mib(memstat::rss())
        )?;
    }
    Ok(out)
}

pub mod device;
pub mod device_speed;
mod device_table;
pub mod gguf;
pub mod load;
pub mod memory;
pub mod peer;
pub mod speed;
pub mod speed_umt5;
pub mod speed_vae;
