//! `baton bench speed`: baton against its PyTorch peer on the same CPU, in
//! the same run. The DiT forward at the configuration (dim 1024,
//! 8 heads x 128, 4 layers, ffn 4096, latent [1,16,3,32,32], 512 text
//! tokens) in f32 and bf16, random weights; baton and the peer alternate
//! (A B A B ...) so both see the same machine load, and the figure is the
//! median of the per-round ratios. The umT5 rows are in `speed_umt5`.
//!
//! The peer is `benches/peers/peer_forward.py` (diffusers
//! `WanTransformer3DModel`), run with the Python named by `BATON_PEER_PYTHON`
//! (else `venv/bin/python` when it exists). Without it, the table prints
//! the peer time measured on the 2-core machine in issue 19, labelled so.

use crate::models::wan::dit::WanDit;
use crate::models::wan::linear::gemm_path;
use crate::models::wan::WanConfig;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use super::peer::SpeedOptions;
use super::peer::{interleave, peer_python, run_peer_if, span_table, torch_dtype, Row};
use std::collections::HashMap;
use std::fmt::Write;
use std::time::Instant;

/// The DiT configuration with `layers` blocks.
pub fn speed_config(layers: usize) -> WanConfig {
    WanConfig {
        dim: 1024,
        ffn_dim: 4096,
        num_heads: 8,
        num_layers: layers,
        text_dim: 4096,
        ..WanConfig::wan22_t2v_a14b()
    }
}

/// Seeded random weights (xorshift, std ~0.06; norm weights around 1).
pub fn random_dit(cfg: &WanConfig, dtype: DType) -> candle_core::Result<WanDit> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut tensors = HashMap::new();
    for (k, shape) in crate::runtime::builtin::wan_tensor_shapes(cfg) {
        let n: usize = shape.iter().product();
        let one = if k.contains("norm") && k.ends_with(".weight") {
            1.0
        } else {
            0.0
        };
        let v: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                one + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect();
        let t = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)?;
        tensors.insert(k, t);
    }
    WanDit::new(cfg, VarBuilder::from_tensors(tensors, dtype, &Device::Cpu))
}

/// The speed latent [1, 16, frames, 32, 32] (256 tokens a frame): a
/// smooth deterministic pattern (the peer times random inputs of the same
/// shape; the values do not change the work).
pub fn speed_latent(frames: usize) -> candle_core::Result<Tensor> {
    let n = 16 * frames * 32 * 32;
    (Tensor::arange(0f32, n as f32, &Device::Cpu)?.reshape((1, 16, frames, 32, 32))? * 0.01)?.sin()
}

/// The DiT inputs of the speed figures: latent [1,16,3,32,32], t = 500,
/// 512 text tokens.
pub fn speed_inputs(cfg: &WanConfig) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let dev = Device::Cpu;
    let x = speed_latent(3)?;
    let ctx = (Tensor::arange(0f32, (512 * cfg.text_dim) as f32, &dev)?.reshape((
        1,
        512,
        cfg.text_dim,
    ))? * 0.001)?
        .cos()?;
    Ok((x, Tensor::new(&[500f32], &dev)?, ctx))
}

/// Seconds of one baton DiT forward.
fn time_forward(m: &WanDit, x: &Tensor, t: &Tensor, ctx: &Tensor) -> anyhow::Result<f64> {
    let s = Instant::now();
    let y = m.forward(x, t, ctx)?;
    y.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
    Ok(s.elapsed().as_secs_f64())
}

/// Figures measured in issue 19 on the 2-core machine (seconds), for when
/// no peer is installed.
fn recorded_peer(dtype: DType) -> f64 {
    if dtype == DType::BF16 {
        0.449
    } else {
        1.047
    }
}

/// The DiT rows.
pub fn dit_rows(o: &SpeedOptions) -> anyhow::Result<Vec<Row>> {
    let cfg = speed_config(o.layers);
    let threads = candle_core::utils::get_num_threads();
    let py = peer_python();
    let mut rows = Vec::new();
    for dtype in o.dtypes_or_both() {
        let m = random_dit(&cfg, dtype)?;
        let (x, t, ctx) = speed_inputs(&cfg)?;
        let args: Vec<String> = [
            "--dim",
            "1024",
            "--layers",
            &o.layers.to_string(),
            "--ffn",
            "4096",
            "--frames",
            "3",
            "--hw",
            "32",
            "--ctx",
            "512",
            "--threads",
            &threads.to_string(),
            "--dtype",
            torch_dtype(dtype),
            "--reps",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let what = format!(
            "DiT forward {dtype:?}, dim 1024, {} layers, 768 tokens, ctx 512",
            o.layers
        );
        rows.push(interleave(
            what,
            o.rounds,
            || time_forward(&m, &x, &t, &ctx),
            || run_peer_if(&py, "peer_forward.py", &args),
            recorded_peer(dtype) * o.layers as f64 / 4.0,
        )?);
        if std::env::var("BATON_DIT_SPANS").is_ok_and(|v| v == "1") {
            println!("{}", dit_spans(&m, &x, &t, &ctx, dtype)?);
        }
    }
    Ok(rows)
}

/// The profile breakdown of one DiT forward by kernel (timing spans, see
/// `models::wan::spans`), as a markdown table.
fn dit_spans(
    m: &WanDit,
    x: &Tensor,
    t: &Tensor,
    ctx: &Tensor,
    dtype: DType,
) -> anyhow::Result<String> {
    let what = format!(
        "DiT forward {dtype:?}, one forward by span ({})",
        gemm_path()
    );
    span_table(&what, "other (stem, head, modulation split)", || {
        time_forward(m, x, t, ctx)
    })
}

/// The table `baton bench speed` prints.
pub fn run(o: &SpeedOptions) -> anyhow::Result<String> {
    let mut rows = if o.wants("dit") {
        dit_rows(o)?
    } else {
        Vec::new()
    };
    if o.wants("vae") {
        rows.push(super::speed_vae::vae_row(o)?);
    }
    if o.wants("umt5") {
        rows.extend(super::speed_umt5::umt5_rows(o)?);
    }
    let mut s = String::new();
    writeln!(
        s,
        "threads {}; DiT GEMM path: {}; ratio = peer time / baton time (above 1: baton faster), median of {} alternating rounds",
        candle_core::utils::get_num_threads(),
        gemm_path(),
        o.rounds
    )?;
    writeln!(s, "| work | PyTorch peer | baton | ratio |")?;
    writeln!(s, "|---|---|---|---|")?;
    for r in rows {
        let peer = if r.peer_measured_now {
            format!("{:.1} ms", r.peer_s * 1000.0)
        } else if r.peer_s.is_nan() {
            "no peer installed, none recorded".to_string()
        } else {
            format!(
                "{:.1} ms (recorded in issue 19, not this run)",
                r.peer_s * 1000.0
            )
        };
        let ratio = if r.ratio.is_nan() {
            "n/a".to_string()
        } else {
            format!("{:.2}x", r.ratio)
        };
        writeln!(
            s,
            "| {} | {peer} | {:.1} ms | {ratio} |",
            r.what,
            r.baton_s * 1000.0
        )?;
    }
    Ok(s)
}
