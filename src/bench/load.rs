//! `baton bench load`: how fast `load_model` reads a large checkpoint
//! compared with the disk cache itself, and what RSS peaks at meanwhile.
//!
//! A 14B expert is 28.6 GB in bf16, so load time is mostly memory
//! bandwidth: the honest yardstick is a plain sequential `read` of the same
//! file from the page cache, in the same run. The file is a real Wan
//! architecture (wide and deep enough to reach the asked size), written
//! once to a temp file that is removed at the end.

use crate::models::wan::WanConfig;
use crate::runtime::memstat;
use crate::runtime::size::mib;
use crate::runtime::{LoadOptions, Runtime};
use candle_core::Device;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct LoadBenchOptions {
    /// Checkpoint size to write, in GB (10^9 bytes).
    pub size_gb: f64,
    /// Where the temp file goes (default: the system temp dir).
    pub dir: Option<PathBuf>,
    pub repeats: usize,
}

/// Removes the bench file however the bench ends.
pub(crate) struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn run(o: &LoadBenchOptions) -> anyhow::Result<String> {
    if !(o.size_gb.is_finite() && o.size_gb > 0.0) {
        anyhow::bail!("--size-gb must be a positive number, got {}", o.size_gb);
    }
    let dir = o.dir.clone().unwrap_or_else(std::env::temp_dir);
    let file = TempFile(dir.join(format!(
        "baton-bench-load-{}.safetensors",
        std::process::id()
    )));
    let cfg = config_for((o.size_gb * 1e9) as u64);
    let t0 = Instant::now();
    let bytes = write_checkpoint(&file.0, &cfg)?;
    let write_s = t0.elapsed().as_secs_f64();
    let gb = bytes as f64 / 1e9;

    let mut out = String::new();
    writeln!(
        out,
        "baton bench load: {} bf16 Wan DiT (dim {}, ffn {}, {} layers), {}; written in {write_s:.1} s",
        mib(bytes),
        cfg.dim,
        cfg.ffn_dim,
        cfg.num_layers,
        file.0.display()
    )?;
    // Warm the page cache: both contestants then read from memory.
    sequential_read(&file.0)?;
    let mut reads = Vec::new();
    let mut loads = Vec::new();
    let mut peaks = Vec::new();
    let mut mapped = 0;
    let mut rt = Runtime::new(Device::Cpu, None);
    for _ in 0..o.repeats.max(1) {
        let t0 = Instant::now();
        sequential_read(&file.0)?;
        reads.push(t0.elapsed().as_secs_f64());

        memstat::trim();
        let before = memstat::rss();
        memstat::reset_peak();
        let t0 = Instant::now();
        let id = rt.load_model(&file.0.to_string_lossy(), &LoadOptions::default(), "bench")?;
        loads.push(t0.elapsed().as_secs_f64());
        peaks.push((before, memstat::peak_rss(), memstat::rss()));
        mapped = crate::checkpoint::mapped::mapped_bytes();
        rt.delete_model(id, "bench")?;
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (read_s, load_s) = (best(&reads), best(&loads));
    writeln!(
        out,
        "{:<40} {:>9} {:>9}",
        "what (best of runs, page cache warm)", "time", "GB/s"
    )?;
    writeln!(
        out,
        "{:<40} {:>7.3} s {:>9.2}",
        "sequential read (8 MiB buffer)",
        read_s,
        gb / read_s
    )?;
    writeln!(
        out,
        "{:<40} {:>7.3} s {:>9.2}",
        "load_model (bf16 resident)",
        load_s,
        gb / load_s
    )?;
    writeln!(out, "load / read throughput: {:.2}", read_s / load_s)?;
    let (before, peak, after) = peaks
        .iter()
        .copied()
        .max_by_key(|p| p.1 - p.0)
        .unwrap_or_default();
    writeln!(
        out,
        "RSS during load_model: {} before, peak {} (+{}), {} loaded; file {}",
        mib(before),
        mib(peak),
        mib(peak.saturating_sub(before)),
        mib(after),
        mib(bytes)
    )?;
    writeln!(
        out,
        "tensors mapped from the page cache (no copy): {}{}",
        mib(mapped as u64),
        if crate::checkpoint::mapped::enabled() {
            ""
        } else {
            " (mapping off: BATON_LOAD_COPY, or a binary without baton's allocator)"
        }
    )?;
    Ok(out)
}

/// A Wan config whose bf16 checkpoint is about `bytes`: dim 1024, as many
/// layers as it takes (each ~34 MB).
fn config_for(bytes: u64) -> WanConfig {
    let base = WanConfig {
        dim: 1024,
        ffn_dim: 4096,
        freq_dim: 256,
        text_dim: 1024,
        in_dim: 16,
        out_dim: 16,
        num_heads: 8,
        num_layers: 1,
        patch_size: [1, 2, 2],
        eps: 1e-6,
        rope_theta: 10000.0,
    };
    let per_block = 2 * block_params(&base);
    WanConfig {
        num_layers: (bytes.div_ceil(per_block)).max(1) as usize,
        ..base
    }
}

pub(crate) fn block_params(c: &WanConfig) -> u64 {
    let (d, f) = (c.dim as u64, c.ffn_dim as u64);
    2 * (4 * (d * d + d) + 2 * d) + 2 * d + (f * d + f) + (d * f + d) + 6 * d
}

/// Streams a bf16 safetensors file for `cfg` (small seeded values, never
/// the whole file in memory). Returns its length.
fn write_checkpoint(path: &Path, cfg: &WanConfig) -> anyhow::Result<u64> {
    write_checkpoint_seeded(path, cfg, 0x2545_F491_4F6C_DD1D)
}

/// [`write_checkpoint`] with its own seed (two experts that differ).
pub(crate) fn write_checkpoint_seeded(
    path: &Path,
    cfg: &WanConfig,
    seed: u64,
) -> anyhow::Result<u64> {
    let list = crate::roots::builtin::wan_tensor_shapes(cfg);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &list {
        let n = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n] }),
        );
        offset += n;
    }
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ "num_heads": cfg.num_heads.to_string() }),
    );
    let mut json = serde_json::to_vec(&header)?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let f = std::fs::File::create(path)?;
    let mut w = std::io::BufWriter::with_capacity(8 << 20, f);
    w.write_all(&(json.len() as u64).to_le_bytes())?;
    w.write_all(&json)?;
    let mut state = seed.max(1);
    let mut buf = Vec::with_capacity(8 << 20);
    for (_, shape) in &list {
        let mut left = shape.iter().product::<usize>();
        while left > 0 {
            let n = left.min(4 << 20);
            buf.clear();
            for _ in 0..n {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Values in about ±0.02: a bf16 with exponent 2^-6 and a
                // random sign and mantissa.
                let bits = 0x3c80u16 | ((state >> 48) as u16 & 0x807f);
                buf.extend_from_slice(&bits.to_le_bytes());
            }
            w.write_all(&buf)?;
            left -= n;
        }
    }
    w.flush()?;
    Ok((8 + json.len() + offset) as u64)
}

/// Reads the whole file through one reused 8 MiB buffer.
pub(crate) fn sequential_read(path: &Path) -> anyhow::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    Ok(crate::runtime::prefetch::read_through(
        &mut f,
        8 << 20,
        |_| {},
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_checkpoint_is_a_wan_dit_of_the_asked_size() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WanConfig {
            num_layers: 2,
            ..config_for(1)
        };
        let p = dir.path().join("b.safetensors");
        let len = write_checkpoint(&p, &cfg).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
        let h = crate::checkpoint::Header::read(&p).unwrap();
        let d = crate::checkpoint::detect(&h, None).unwrap();
        assert_eq!(d.cfg, cfg);
        assert_eq!(2 * h.param_count(), h.total_bytes());
        let big = config_for(1_000_000_000);
        let per_block = 2 * block_params(&big);
        assert!(big.num_layers as u64 * per_block >= 1_000_000_000);
    }
}
