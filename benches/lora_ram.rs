//! RSS cost of applying a LoRA to a resident Wan DiT, run by hand:
//!
//! ```text
//! cargo bench --bench lora_ram -- [DIM] [FFN] [LAYERS] [RANK]   # default 1024 4096 8 32
//! ```
//!
//! Writes a random f32 DiT (over 500 MB at the defaults) and a random
//! kohya-format LoRA on every block linear, loads the model whole, then
//! applies and removes the LoRA, printing RSS (after a malloc trim), the
//! peak RSS during each step, and what the ledger counts.

use baton::models::wan::WanConfig;
use baton::runtime::builtin::{tiny_config, write_tiny};
use baton::runtime::{memstat, LoadOptions, Runtime};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::time::Instant;

const MIB: f64 = (1u64 << 20) as f64;

fn rss() -> f64 {
    memstat::trim();
    memstat::rss() as f64 / MIB
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let cfg = WanConfig {
        dim: arg(0, 1024),
        ffn_dim: arg(1, 4096),
        num_layers: arg(2, 8),
        num_heads: arg(0, 1024) / 128,
        ..tiny_config()
    };
    let rank = arg(3, 32);
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("model.safetensors");
    write_tiny(&model, &cfg, 11, "lora-ram").expect("write model");
    let lora = dir.path().join("lora.safetensors");
    let mut tensors = HashMap::new();
    let (d, f) = (cfg.dim, cfg.ffn_dim);
    for n in 0..cfg.num_layers {
        let mut linears: Vec<(String, usize, usize)> = Vec::new();
        for a in ["self_attn", "cross_attn"] {
            for p in ["q", "k", "v", "o"] {
                linears.push((format!("{a}.{p}"), d, d));
            }
        }
        linears.push(("ffn.0".into(), f, d));
        linears.push(("ffn.2".into(), d, f));
        for (m, out, inp) in linears {
            let k = format!("diffusion_model.blocks.{n}.{m}");
            let down = Tensor::randn(0f32, 0.01, (rank, inp), &Device::Cpu).unwrap();
            let up = Tensor::randn(0f32, 0.01, (out, rank), &Device::Cpu).unwrap();
            tensors.insert(format!("{k}.lora_down.weight"), down);
            tensors.insert(format!("{k}.lora_up.weight"), up);
            tensors.insert(
                format!("{k}.alpha"),
                Tensor::new(rank as f32, &Device::Cpu).unwrap(),
            );
        }
    }
    candle_core::safetensors::save(&tensors, &lora).expect("write lora");
    drop(tensors);
    let lora_file = std::fs::metadata(&lora).unwrap().len() as f64 / MIB;

    let mut rt = Runtime::new(Device::Cpu, None);
    let base = rss();
    let opts = LoadOptions {
        dtype: Some(DType::F32),
        ..Default::default()
    };
    let id = rt
        .load_model(&model.display().to_string(), &opts, "bench")
        .expect("load");
    let loaded = rss();
    let model_mib = rt.model_bytes(id).unwrap() as f64 / MIB;
    println!(
        "model {model_mib:.1} MiB ({} layers, dim {d}, ffn {f}); LoRA rank {rank}, file {lora_file:.1} MiB",
        cfg.num_layers
    );
    println!("rss: before load {base:.1} MiB, loaded {loaded:.1} MiB");

    let lora_path = lora.display().to_string();
    for round in 0..2 {
        memstat::reset_peak();
        let t = Instant::now();
        rt.apply_lora(id, &lora_path, 1.0).expect("apply");
        let secs = t.elapsed().as_secs_f64();
        let peak = memstat::peak_rss() as f64 / MIB;
        let applied = rss();
        let ledger = rt.ledger().get(id).unwrap().lora as f64 / MIB;
        println!(
            "round {round}: apply {secs:.2}s: rss {applied:.1} MiB (+{:.1} over loaded; ledger counts {ledger:.1} MiB of factors); peak during apply +{:.1} MiB",
            applied - loaded,
            peak - loaded
        );
        memstat::reset_peak();
        let t = Instant::now();
        rt.remove_lora(id, &lora_path).expect("remove");
        let secs = t.elapsed().as_secs_f64();
        let removed = rss();
        println!(
            "round {round}: remove {secs:.2}s: rss {removed:.1} MiB (+{:.1} over loaded); peak during remove +{:.1} MiB",
            removed - loaded,
            memstat::peak_rss() as f64 / MIB - loaded
        );
    }
}
