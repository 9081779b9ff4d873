//! The umT5 rows of `baton bench speed`: one encoder forward of 512 tokens
//! at umT5-XXL widths (d_model 4096, d_ff 10240, 64 heads x 64) with
//! [`LAYERS`] blocks, seeded random weights, against transformers'
//! `UMT5EncoderModel` at the same config (`benches/peers/peer_umt5.py`),
//! alternating as the DiT rows do. The vocabulary is cut to [`VOCAB`] rows
//! on both sides: the lookup is not the cost, and the full table would add
//! 4 GB to each process.

use super::peer::{
    interleave, peer_python, run_peer_if, span_table, torch_dtype, Row, SpeedOptions,
};
use crate::models::umt5::{UmT5Config, UmT5Encoder};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::time::Instant;

/// Encoder blocks of the speed config (umT5-XXL has 24; one block is
/// ~200 GFLOP at 512 tokens, so two keep a round under a minute here).
pub const LAYERS: usize = 2;
/// Rows of the token embedding on both sides.
pub const VOCAB: usize = 4096;
/// Tokens per prompt, every one real (the pipeline's 512).
pub const TOKENS: usize = 512;

/// umT5-XXL widths with `LAYERS` blocks and `VOCAB` rows.
pub fn umt5_speed_config() -> UmT5Config {
    UmT5Config {
        vocab_size: VOCAB,
        num_layers: LAYERS,
        ..UmT5Config::xxl()
    }
}

/// Every tensor of a umT5 encoder under its canonical name, with its shape.
fn shapes(c: &UmT5Config) -> Vec<(String, Vec<usize>)> {
    let (d, inner, ff) = (c.d_model, c.inner_dim(), c.d_ff);
    let mut v = vec![
        ("shared.weight".to_string(), vec![c.vocab_size, d]),
        ("encoder.final_layer_norm.weight".to_string(), vec![d]),
    ];
    for i in 0..c.num_layers {
        let b = format!("encoder.block.{i}.layer");
        let sa = format!("{b}.0.SelfAttention");
        let ffn = format!("{b}.1.DenseReluDense");
        v.extend([
            (format!("{b}.0.layer_norm.weight"), vec![d]),
            (format!("{sa}.q.weight"), vec![inner, d]),
            (format!("{sa}.k.weight"), vec![inner, d]),
            (format!("{sa}.v.weight"), vec![inner, d]),
            (format!("{sa}.o.weight"), vec![d, inner]),
            (
                format!("{sa}.relative_attention_bias.weight"),
                vec![c.num_buckets, c.num_heads],
            ),
            (format!("{b}.1.layer_norm.weight"), vec![d]),
            (format!("{ffn}.wi_0.weight"), vec![ff, d]),
            (format!("{ffn}.wi_1.weight"), vec![ff, d]),
            (format!("{ffn}.wo.weight"), vec![d, ff]),
        ]);
    }
    v
}

/// Seeded random weights in `dtype` (xorshift; norm weights around 1,
/// matrices with std ~0.02 so activations stay in range over the blocks).
pub fn random_umt5(cfg: &UmT5Config, dtype: DType) -> candle_core::Result<UmT5Encoder> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut tensors = HashMap::new();
    for (k, shape) in shapes(cfg) {
        let n: usize = shape.iter().product();
        let (one, spread) = if k.contains("layer_norm") {
            (1.0, 0.2)
        } else {
            (0.0, 0.07)
        };
        let v: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                one + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * spread
            })
            .collect();
        let t = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)?;
        tensors.insert(k, t);
    }
    UmT5Encoder::new(cfg, VarBuilder::from_tensors(tensors, dtype, &Device::Cpu))
}

/// Token ids [1, TOKENS] spread over the vocabulary, and an all-ones mask.
fn inputs(cfg: &UmT5Config) -> candle_core::Result<(Tensor, Tensor)> {
    let ids: Vec<u32> = (0..TOKENS as u32)
        .map(|i| (i * 2_654_435_761u32.wrapping_add(i)) % cfg.vocab_size as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (1, TOKENS), &Device::Cpu)?;
    let mask = Tensor::ones((1, TOKENS), DType::U32, &Device::Cpu)?;
    Ok((ids, mask))
}

/// Seconds of one baton encoder forward.
fn time_encode(m: &UmT5Encoder, ids: &Tensor, mask: &Tensor) -> anyhow::Result<f64> {
    let s = Instant::now();
    let y = m.forward(ids, mask)?;
    y.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
    Ok(s.elapsed().as_secs_f64())
}

/// The umT5 rows, f32 and bf16 (or only the dtypes asked). Without a peer
/// the row says so: no figure of the peer was recorded elsewhere.
pub fn umt5_rows(o: &SpeedOptions) -> anyhow::Result<Vec<Row>> {
    let cfg = umt5_speed_config();
    let threads = candle_core::utils::get_num_threads();
    let py = peer_python();
    let mut rows = Vec::new();
    for dtype in o.dtypes_or_both() {
        let m = random_umt5(&cfg, dtype)?;
        let (ids, mask) = inputs(&cfg)?;
        let args: Vec<String> = [
            "--layers",
            &LAYERS.to_string(),
            "--tokens",
            &TOKENS.to_string(),
            "--vocab",
            &VOCAB.to_string(),
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
        let what = format!("umT5 encode {dtype:?}, XXL widths, {LAYERS} layers, {TOKENS} tokens");
        if std::env::var("BATON_DIT_SPANS").is_ok_and(|v| v == "1") {
            let what = format!("umT5 encode {dtype:?}, one encode by span");
            let table = span_table(&what, "other (embedding, casts, adds)", || {
                time_encode(&m, &ids, &mask)
            })?;
            println!("{table}");
        }
        rows.push(interleave(
            what,
            o.rounds,
            || time_encode(&m, &ids, &mask),
            || run_peer_if(&py, "peer_umt5.py", &args),
            f64::NAN,
        )?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_shapes_are_a_complete_umt5() {
        let cfg = UmT5Config {
            num_layers: 2,
            ..UmT5Config::fixture_tiny()
        };
        let s = shapes(&cfg);
        let got = UmT5Config::infer(s.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        assert_eq!(got, cfg);
    }
}
