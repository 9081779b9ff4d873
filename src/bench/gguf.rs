//! `baton bench gguf`: GGUF models against the float forwards of the same
//! weights, measured in the same run. A seeded expert at the speed bench's
//! configuration (dim 1024, 8 heads x 128, 4 layers, ffn 4096; latent
//! [1,16,3,32,32] = 768 tokens, 512 text tokens; see `bench speed`) is
//! written as f32 safetensors and converted to Q8_0 and Q4_K GGUFs (the
//! blocks' matrices quantized, the rest F32, as the community files are).
//! Each is loaded through `load_model` and timed with the exact path (each
//! weight dequantized to f32 per call, the default) and with candle's
//! quantized kernel (`BATON_GGUF_MATMUL=kernel`: activations quantized to
//! Q8 first). All models are loaded at once and the forwards interleaved,
//! one of each per round, so machine load falls on every row alike.

use super::median;
use crate::checkpoint::gguf_write::quantize_wan;
use crate::checkpoint::{qblocks, Header};
use crate::models::wan::WanConfig;
use crate::runtime::size::mib;
use crate::runtime::{LoadOptions, Runtime};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Options of `baton bench gguf`.
#[derive(Debug, Clone)]
pub struct GgufBenchOptions {
    /// Interleaved rounds (one forward of every row each).
    pub rounds: usize,
    pub dim: usize,
    pub heads: usize,
    pub layers: usize,
    pub ffn: usize,
    /// Latent frames (3: the speed bench's 768 tokens; 256 tokens each).
    pub frames: usize,
}

impl Default for GgufBenchOptions {
    /// The configuration of `bench speed` (issue 19).
    fn default() -> Self {
        Self {
            rounds: 3,
            dim: 1024,
            heads: 8,
            layers: 4,
            ffn: 4096,
            frames: 3,
        }
    }
}

/// One row: how the weights are held and multiplied.
struct Row {
    label: &'static str,
    file: PathBuf,
    dtype: Option<DType>,
    kernel: bool,
}

fn row(label: &'static str, file: &std::path::Path, dtype: Option<DType>, kernel: bool) -> Row {
    Row {
        label,
        file: file.to_path_buf(),
        dtype,
        kernel,
    }
}

/// Seconds to dequantize every block-quantized tensor of `path` to f32
/// once (what the exact path adds to each forward), median of `n`.
fn dequant_all_secs(path: &std::path::Path, n: usize) -> anyhow::Result<f64> {
    let header = Header::read(path)?;
    let bytes = std::fs::read(path)?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let t0 = Instant::now();
        for e in header.tensors.values() {
            if let Some(ty) = e.ggml.filter(|_| e.kept_as_stored()) {
                let q = qblocks::qtensor(&bytes[e.start..e.end], ty, &e.shape)?;
                q.dequantize(&Device::Cpu)?;
            }
        }
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

pub fn run(o: &GgufBenchOptions) -> anyhow::Result<String> {
    let cfg = WanConfig {
        dim: o.dim,
        num_heads: o.heads,
        num_layers: o.layers,
        ffn_dim: o.ffn,
        ..crate::bench::speed::speed_config(o.layers)
    };
    if o.heads == 0 || !o.dim.is_multiple_of(o.heads) || o.dim / o.heads != 128 {
        anyhow::bail!(
            "bench gguf: dim {} / {} heads must be 128 per head (GGUF files carry no head count)",
            o.dim,
            o.heads
        );
    }
    let dir = tempfile::tempdir()?;
    let f32_file = dir.path().join("expert_f32.safetensors");
    crate::roots::builtin::write_tiny(&f32_file, &cfg, 1, "bench-gguf")
        .map_err(anyhow::Error::msg)?;
    let q8 = dir.path().join("expert_Q8_0.gguf");
    let q4 = dir.path().join("expert_Q4_K.gguf");
    quantize_wan(&f32_file, &q8, GgmlDType::Q8_0)?;
    quantize_wan(&f32_file, &q4, GgmlDType::Q4K)?;
    let rows = [
        row("f32 safetensors", &f32_file, None, false),
        row("bf16 (same weights)", &f32_file, Some(DType::BF16), false),
        row("Q8_0, dequant+f32 GEMM", &q8, None, false),
        row("Q8_0, QMatMul kernel", &q8, None, true),
        row("Q4_K, dequant+f32 GEMM", &q4, None, false),
        row("Q4_K, QMatMul kernel", &q4, None, true),
    ];
    let (_, t, ctx) = crate::bench::speed::speed_inputs(&cfg)?;
    // More latent frames (more tokens) where asked, the same pattern.
    let x = crate::bench::speed::speed_latent(o.frames)?;
    let mut out = String::new();
    writeln!(
        out,
        "baton bench gguf: seeded Wan expert dim {}, {} heads x 128, {} layers, ffn {}; latent {:?} \
         ({} tokens), context {} tokens; median of {} interleaved rounds, {} threads, CPU",
        o.dim,
        o.heads,
        o.layers,
        o.ffn,
        x.dims(),
        x.dim(2)? * x.dim(3)? / 2 * x.dim(4)? / 2,
        ctx.dim(1)?,
        o.rounds,
        candle_core::utils::get_num_threads()
    )?;
    let mut rt = Runtime::new(Device::Cpu, None);
    let mut ids = Vec::with_capacity(rows.len());
    for r in &rows {
        if r.kernel {
            std::env::set_var("BATON_GGUF_MATMUL", "kernel");
        }
        let opts = LoadOptions {
            dtype: r.dtype,
            ..LoadOptions::default()
        };
        let id = rt.load_model(&r.file.display().to_string(), &opts, "bench");
        std::env::remove_var("BATON_GGUF_MATMUL");
        ids.push(id?);
    }
    let forward = |rt: &mut Runtime, id| -> anyhow::Result<(Tensor, f64)> {
        let t0 = Instant::now();
        let y = rt.predict(id, &x, &t, &ctx)?;
        let y = y.to_dtype(DType::F32)?;
        Ok((y, t0.elapsed().as_secs_f64()))
    };
    // Warm-up, and the outputs compared.
    let mut outs = Vec::with_capacity(ids.len());
    for &id in &ids {
        outs.push(forward(&mut rt, id)?.0);
    }
    let mut times = vec![Vec::with_capacity(o.rounds); rows.len()];
    for _ in 0..o.rounds.max(1) {
        for (k, &id) in ids.iter().enumerate() {
            times[k].push(forward(&mut rt, id)?.1);
        }
    }
    let secs: Vec<f64> = times.into_iter().map(median).collect();
    writeln!(
        out,
        "| weights | resident | forward | vs f32 | rel L2 vs f32 | rel L2 vs dequant path |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    for (k, r) in rows.iter().enumerate() {
        let resident = rt.ledger().get(ids[k]).map_or(0, |e| e.weights);
        let vs_deq = if r.kernel {
            format!("{:.2e}", rel_l2(&outs[k], &outs[k - 1])?)
        } else {
            "-".into()
        };
        writeln!(
            out,
            "| {} | {} | {:.3} s | {:.2}x | {:.2e} | {} |",
            r.label,
            mib(resident),
            secs[k],
            secs[k] / secs[0],
            rel_l2(&outs[k], &outs[0])?,
            vs_deq
        )?;
    }
    for id in ids {
        rt.delete_model(id, "bench")?;
    }
    writeln!(
        out,
        "dequantizing every block matrix to f32 once (part of each dequant+f32 forward): \
         Q8_0 {:.3} s, Q4_K {:.3} s",
        dequant_all_secs(&q8, o.rounds)?,
        dequant_all_secs(&q4, o.rounds)?
    )?;
    Ok(out)
}

fn rel_l2(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    let d = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    let n = b.sqr()?.sum_all()?.to_scalar::<f64>()?;
    Ok((d / n).sqrt())
}
