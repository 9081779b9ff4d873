//! `baton bench gguf`: the speed table of GGUF models against the float
//! forwards of the same weights, measured in the same run. The built-in
//! tiny expert (f32 safetensors) is converted to Q8_0 and Q4_K GGUFs
//! (blocks' matrices quantized, the rest F32, as the community files are);
//! each is loaded and timed with the exact path (weights dequantized to f32
//! per call, the default) and with candle's quantized kernel
//! (`BATON_GGUF_MATMUL=kernel`, activations quantized to Q8 first).

use super::{median, LatentOptions};
use crate::checkpoint::gguf_write::quantize_wan;
use crate::runtime::size::mib;
use crate::runtime::{LoadOptions, Runtime};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use std::fmt::Write;
use std::time::Instant;

/// One row: how the weights are held and multiplied.
struct Row {
    label: &'static str,
    file: std::path::PathBuf,
    dtype: Option<DType>,
    kernel: bool,
}

pub fn run(o: &LatentOptions) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let f32_file = dir.path().join("tiny_f32.safetensors");
    crate::roots::builtin::write_tiny(
        &f32_file,
        &crate::roots::builtin::tiny_config(),
        1,
        "bench-gguf",
    )
    .map_err(anyhow::Error::msg)?;
    let q8 = dir.path().join("tiny_Q8_0.gguf");
    let q4 = dir.path().join("tiny_Q4_K.gguf");
    quantize_wan(&f32_file, &q8, GgmlDType::Q8_0)?;
    quantize_wan(&f32_file, &q4, GgmlDType::Q4K)?;
    let rows = [
        Row {
            label: "f32 safetensors",
            file: f32_file.clone(),
            dtype: None,
            kernel: false,
        },
        Row {
            label: "bf16 (same file)",
            file: f32_file.clone(),
            dtype: Some(DType::BF16),
            kernel: false,
        },
        Row {
            label: "Q8_0, dequant+f32",
            file: q8.clone(),
            dtype: None,
            kernel: false,
        },
        Row {
            label: "Q8_0, quantized kernel",
            file: q8,
            dtype: None,
            kernel: true,
        },
        Row {
            label: "Q4_K, dequant+f32",
            file: q4.clone(),
            dtype: None,
            kernel: false,
        },
        Row {
            label: "Q4_K, quantized kernel",
            file: q4,
            dtype: None,
            kernel: true,
        },
    ];
    let latent = [1, 16, (o.frames - 1) / 4 + 1, o.height / 8, o.width / 8];
    let tokens = latent[2] * latent[3] / 2 * latent[4] / 2;
    let x = Tensor::randn(0f32, 1.0, &latent, &Device::Cpu)?;
    let ctx = Tensor::randn(0f32, 1.0, (1, o.context_len, 4096), &Device::Cpu)?;
    let t = Tensor::new(&[500f32], &Device::Cpu)?;
    let mut out = String::new();
    writeln!(
        out,
        "baton bench gguf: the built-in tiny expert (dim 512, 8 blocks) as f32, bf16, Q8_0 and Q4_K; \
         latent {latent:?} ({tokens} tokens), context {} tokens, median of {} forwards, {} threads, CPU",
        o.context_len,
        o.repeats,
        candle_core::utils::get_num_threads()
    )?;
    writeln!(
        out,
        "{:<24} {:>12} {:>11} {:>9} {:>16}",
        "weights", "resident", "forward", "vs f32", "rel L2 vs f32"
    )?;
    // Every model loaded at once and the forwards interleaved (one of each
    // per round), so load on a shared machine falls on all rows alike.
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
    // Warm-up, and the outputs compared.
    let outs: Vec<Tensor> = ids
        .iter()
        .map(|&id| rt.predict(id, &x, &t, &ctx))
        .collect::<Result<_, _>>()?;
    let mut times = vec![Vec::with_capacity(o.repeats); rows.len()];
    for _ in 0..o.repeats {
        for (k, &id) in ids.iter().enumerate() {
            let t0 = Instant::now();
            rt.predict(id, &x, &t, &ctx)?;
            times[k].push(t0.elapsed().as_secs_f64());
        }
    }
    let secs: Vec<f64> = times.into_iter().map(median).collect();
    for (k, r) in rows.iter().enumerate() {
        let resident = rt.ledger().get(ids[k]).map_or(0, |e| e.weights);
        writeln!(
            out,
            "{:<24} {:>12} {:>9.3} s {:>8.2}x {:>16.2e}",
            r.label,
            mib(resident),
            secs[k],
            secs[k] / secs[0],
            rel_l2(&outs[k], &outs[0])?
        )?;
    }
    for id in ids {
        rt.delete_model(id, "bench")?;
    }
    Ok(out)
}

fn rel_l2(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    let d = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    let n = b.sqr()?.sum_all()?.to_scalar::<f64>()?;
    Ok((d / n).sqrt())
}
