//! `baton bench memory`: the memory figures baton promises, measured in one
//! process on the built-in tiny experts.
//!
//! - load throughput against a plain sequential read of the same file, both
//!   from the page cache;
//! - RSS before a load, after it and after `delete_model`;
//! - peak RSS of the two-expert pipeline with both experts loaded, loaded
//!   one at a time, and one at a time with the next one prefetched;
//! - the swap (delete + load + first step) with a cold and a warm page
//!   cache, with and without `prefetch_model` during the previous sample;
//! - forward time with 25%, 50% and 75% of the blocks streamed, with and
//!   without read-ahead, against the fully resident forward.
//!
//! Peaks come from the kernel's VmHWM, reset before each case
//! (`/proc/self/clear_refs`); times are medians.

use super::{median, swap_secs, two_expert_pipeline, Pipeline};
use crate::runtime::placement::stream_buffers;
use crate::runtime::prefetch;
use crate::runtime::size::mib;
use crate::runtime::{memstat, LoadOptions, Runtime};
use candle_core::{Device, Tensor};
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Instant;

const HIGH: &str = "builtin:wan-tiny-high";
const LOW: &str = "builtin:wan-tiny-low";

struct Inputs {
    x: Tensor,
    ctx: Tensor,
    t: Tensor,
}

fn secs<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let t0 = Instant::now();
    let v = f()?;
    Ok((v, t0.elapsed().as_secs_f64()))
}

pub fn run(o: &super::LatentOptions) -> anyhow::Result<String> {
    memstat::configure_allocator();
    let dev = Device::Cpu;
    let latent = [1, 16, (o.frames - 1) / 4 + 1, o.height / 8, o.width / 8];
    let inputs = Inputs {
        x: Tensor::randn(0f32, 1.0, &latent, &dev)?,
        ctx: Tensor::randn(0f32, 1.0, (1, o.context_len, 4096), &dev)?,
        t: Tensor::new(&[500f32], &dev)?,
    };
    let builtin = crate::roots::ModelRoots::default();
    let high = builtin.resolve(HIGH).map_err(anyhow::Error::msg)?;
    let low = builtin.resolve(LOW).map_err(anyhow::Error::msg)?;
    let mut out = String::new();
    writeln!(
        out,
        "baton bench memory: built-in tiny experts ({} each), latent {latent:?}, context {} tokens, {} threads",
        mib(std::fs::metadata(&high)?.len()),
        o.context_len,
        candle_core::utils::get_num_threads()
    )?;
    writeln!(out, "{:<58} {:>14}", "what", "figure")?;
    let mut row = |what: String, fig: String| writeln!(out, "{what:<58} {fig:>14}");

    // 1. Load throughput against a plain read, both from the page cache.
    let size = std::fs::metadata(&high)?.len() as f64;
    plain_read(&high)?; // warm the cache
    let read_s = median(
        (0..3)
            .map(|_| plain_read(&high))
            .collect::<Result<_, _>>()?,
    );
    let mut load_s = Vec::new();
    for _ in 0..3 {
        let mut rt = Runtime::new(dev.clone(), None);
        let (id, s) = secs(|| Ok(rt.load_model(HIGH, &LoadOptions::default(), "bench")?))?;
        load_s.push(s);
        rt.delete_model(id, "bench")?;
    }
    let load_s = median(load_s);
    row(
        "plain read of the file (page cache)".into(),
        format!("{:.2} GB/s", size / read_s / 1e9),
    )?;
    row(
        "load_model of the file (page cache)".into(),
        format!("{:.2} GB/s", size / load_s / 1e9),
    )?;

    // 2. RSS around a load and a delete.
    memstat::trim();
    let before = memstat::rss();
    let mut rt = Runtime::new(dev.clone(), None);
    let id = rt.load_model(HIGH, &LoadOptions::default(), "bench")?;
    let loaded = memstat::rss();
    rt.predict(id, &inputs.x, &inputs.t, &inputs.ctx)?;
    rt.delete_model(id, "bench")?;
    let after = memstat::rss();
    row("RSS before load".into(), mib(before))?;
    row("RSS after load".into(), mib(loaded))?;
    row("RSS after a forward and delete_model".into(), mib(after))?;
    row(
        "  back to baseline within".into(),
        format!(
            "{:+.1} MiB",
            (after as f64 - before as f64) / (1u64 << 20) as f64
        ),
    )?;
    drop(rt);

    // 3. Peak RSS of the two-expert pipeline.
    let both = pipeline_peak(&inputs, Pipeline::BothLoaded)?;
    let seq = pipeline_peak(&inputs, Pipeline::Sequential)?;
    let pre = pipeline_peak(&inputs, Pipeline::SequentialPrefetch)?;
    row("peak RSS, two experts both loaded".into(), mib(both))?;
    row(
        "peak RSS, sequential (load, sample, delete)".into(),
        mib(seq),
    )?;
    row(
        "peak RSS, sequential + prefetch of the next".into(),
        mib(pre),
    )?;

    // 4. Swap time: delete high + load low + first step.
    for (cold, pf) in [(true, false), (true, true), (false, false), (false, true)] {
        let s = swap_time(&inputs, &low, cold, pf)?;
        row(
            format!(
                "swap (delete + load + step), {} cache, {} prefetch",
                if cold { "cold" } else { "warm" },
                if pf { "with" } else { "no" }
            ),
            format!("{s:.3} s"),
        )?;
    }

    // 5. Streamed forwards against resident ones.
    let (resident, _) = forward_time(&inputs, 0, true, o.repeats)?;
    row("forward, fully resident".into(), format!("{resident:.3} s"))?;
    for pct in [25, 50, 75] {
        for read_ahead in [true, false] {
            let (s, frac) = forward_time(&inputs, pct, read_ahead, o.repeats)?;
            row(
                format!(
                    "forward, {:.0}% of blocks streamed, {}",
                    frac * 100.0,
                    if read_ahead {
                        "read-ahead"
                    } else {
                        "no read-ahead"
                    }
                ),
                format!("{s:.3} s ({:.2}x)", s / resident),
            )?;
        }
    }
    Ok(out)
}

fn plain_read(path: &PathBuf) -> anyhow::Result<f64> {
    let (_, s) = secs(|| {
        let mut f = std::fs::File::open(path)?;
        Ok(prefetch::read_through(&mut f, 8 << 20, |_| {})?)
    })?;
    Ok(s)
}

/// Peak RSS of high (2 steps) then low (2 steps) under a budget that holds
/// one expert, as the demo runs it.
fn pipeline_peak(i: &Inputs, how: Pipeline) -> anyhow::Result<u64> {
    memstat::trim();
    memstat::reset_peak();
    let mut rt = Runtime::new(Device::Cpu, Some(200 << 20));
    two_expert_pipeline(&mut rt, (HIGH, LOW), how, &i.x, &i.ctx, 8.0)?;
    let peak = memstat::peak_rss();
    drop(rt);
    Ok(peak)
}

/// delete high + load low + one step, after high sampled two steps; the
/// low file evicted from the page cache first when `cold`.
fn swap_time(i: &Inputs, low: &PathBuf, cold: bool, pf: bool) -> anyhow::Result<f64> {
    if cold {
        prefetch::evict(low)?;
    } else {
        plain_read(low)?;
    }
    let mut rt = Runtime::new(Device::Cpu, Some(200 << 20));
    swap_secs(&mut rt, (HIGH, LOW), pf, &i.x, &i.ctx, 8.0)
}

/// Median forward time with about `pct`% of the blocks streamed, and the
/// fraction of block bytes really streamed.
fn forward_time(
    i: &Inputs,
    pct: usize,
    read_ahead: bool,
    repeats: usize,
) -> anyhow::Result<(f64, f64)> {
    let o = LoadOptions {
        prefetch: read_ahead,
        ..Default::default()
    };
    let mut probe = Runtime::new(Device::Cpu, None);
    let id = probe.load_model(HIGH, &o, "bench")?;
    let m = probe.model(id)?;
    let total = probe.model_bytes(id)?;
    let (blocks, width) = (m.info.blocks, m.info.dtype.size_in_bytes() as u64);
    let header = crate::checkpoint::Header::read(&m.path)?;
    drop(probe);
    // The tiny experts' blocks are all the same size.
    let block: u64 = crate::checkpoint::detect(&header, None)?
        .tensors
        .iter()
        .filter(|(k, _)| k.starts_with("blocks.0."))
        .map(|(_, e)| e.numel() as u64 * width)
        .sum();
    let streamed = blocks * pct / 100;
    // Two read-ahead buffers cost two blocks, so streaming two blocks with
    // read-ahead saves nothing: the smallest saving streams one more.
    let budget = (total - streamed as u64 * block + stream_buffers(streamed, read_ahead) * block)
        .min(total - 1);
    let mut rt = Runtime::new(Device::Cpu, Some(budget));
    let id = rt.load_model(HIGH, &o, "bench")?;
    let got = rt.ledger().get(id).map_or(0, |e| e.offloaded);
    rt.predict(id, &i.x, &i.t, &i.ctx)?; // warm-up
    let times = (0..repeats)
        .map(|_| secs(|| Ok(rt.predict(id, &i.x, &i.t, &i.ctx)?)).map(|(_, s)| s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((median(times), got as f64 / (blocks as u64 * block) as f64))
}
