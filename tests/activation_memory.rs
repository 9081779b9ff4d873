//! The activation formula (`baton::models::wan::memory`) against what a
//! forward really allocates: a counting global allocator records the peak
//! of live heap bytes above the level before the forward (weights and
//! inputs already allocated), at two token counts, f32 and bf16, with the
//! attention score cap small enough that attention runs in chunks; and the
//! fused CPU attention's working memory at 8,192 tokens (no score matrix).
mod common;

use baton::models::wan::dit::{set_attention_score_cap, WanDit};
use baton::models::wan::flash::attention_fused;
use baton::models::wan::memory::activation_peak_bytes_on;
use baton::models::wan::WanConfig;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarding the caller's layout to the system allocator.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), SeqCst) + l.size();
            PEAK.fetch_max(now, SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), SeqCst);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CAP: usize = 1 << 20;

fn cfg() -> WanConfig {
    WanConfig {
        dim: 128,
        ffn_dim: 352,
        num_heads: 2,
        num_layers: 2,
        ..WanConfig::fixture_tiny()
    }
}

/// Peak live bytes during one forward over an (F, H, W) latent.
fn measured(model: &WanDit, latent: [usize; 3], text: usize) -> usize {
    let dev = Device::Cpu;
    let [f, h, w] = latent;
    let x = Tensor::ones((1, 16, f, h, w), DType::F32, &dev).unwrap();
    let x = (x * 0.3).unwrap();
    let ctx = (Tensor::ones((1, text, 32), DType::F32, &dev).unwrap() * 0.1).unwrap();
    let t = Tensor::new(&[600f32], &dev).unwrap();
    let before = LIVE.load(SeqCst);
    PEAK.store(before, SeqCst);
    let y = model.forward(&x, &t, &ctx).unwrap();
    let peak = PEAK.load(SeqCst) - before;
    drop(y);
    peak
}

#[test]
fn formula_matches_a_counting_allocator() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    set_attention_score_cap(CAP);
    let cfg = cfg();
    let text = 24;
    let mut report = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        let vb =
            VarBuilder::from_tensors(common::wan_keys::random_wan(&cfg, 3), dtype, &Device::Cpu);
        let model = WanDit::new(&cfg, vb).unwrap();
        // Warm up at the largest size first: the thread pool and gemm's
        // per-thread packing buffers are allocated once and then kept, and
        // they are not activations.
        measured(&model, [8, 64, 64], text);
        let mut points = Vec::new();
        for latent in [[4, 32, 32], [8, 48, 48], [8, 64, 64]] {
            let tokens = latent[0] * latent[1] / 2 * latent[2] / 2;
            let got = measured(&model, latent, text) as f64;
            let want = activation_peak_bytes_on(&cfg, tokens, text, dtype, &Device::Cpu, false, CAP)
                as f64;
            report.push(format!(
                "{dtype:?} {tokens:>5} tokens: measured {:.2} MiB, formula {:.2} MiB ({:+.1}%)",
                got / 1048576.0,
                want / 1048576.0,
                100.0 * (want - got) / got
            ));
            points.push((tokens as f64, got, want));
        }
        for &(tokens, got, want) in &points {
            let err = (want - got).abs() / got;
            assert!(
                err <= 0.01,
                "{dtype:?} {tokens} tokens: {got} measured vs {want}"
            );
        }
        // Linear growth: the bytes per extra token between the two largest
        // forwards, measured and predicted (quadratic attention would
        // make the measured slope ~4x what it is).
        let (a, b) = (points[1], points[2]);
        let measured_slope = (b.1 - a.1) / (b.0 - a.0);
        let formula_slope = (b.2 - a.2) / (b.0 - a.0);
        report.push(format!(
            "{dtype:?} bytes per extra token: measured {measured_slope:.0}, formula {formula_slope:.0}"
        ));
        assert!(
            (measured_slope / formula_slope - 1.0).abs() < 0.01,
            "{report:?}"
        );

        // Chunking changes nothing: a forward with the 1 MiB cap equals one
        // with the default (all rows at once at this size).
        if dtype == DType::F32 {
            let dev = Device::Cpu;
            let x = Tensor::arange(0f32, (16 * 4 * 32 * 32) as f32, &dev)
                .unwrap()
                .reshape((1, 16, 4, 32, 32))
                .unwrap();
            let x = (x.sin().unwrap() * 0.5).unwrap();
            let ctx = (Tensor::ones((1, text, 32), DType::F32, &dev).unwrap() * 0.1).unwrap();
            let t = Tensor::new(&[600f32], &dev).unwrap();
            let chunked = model.forward(&x, &t, &ctx).unwrap();
            set_attention_score_cap(baton::models::wan::dit::ATTN_SCORE_BYTES);
            let whole = model.forward(&x, &t, &ctx).unwrap();
            set_attention_score_cap(CAP);
            common::assert_close(&chunked, &whole, 1e-6, "chunked vs whole attention");
        }
    }
    set_attention_score_cap(baton::models::wan::dit::ATTN_SCORE_BYTES);
    println!("{}", report.join("\n"));
}

/// Serialises the tests of this file: the counting allocator is global.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn fused_attention_never_materialises_scores() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::Cpu;
    let (s, d) = (8192, 128);
    let mk = |seed: f64| {
        (Tensor::arange(0f32, (s * d) as f32, &dev).unwrap() * seed)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((1, 1, s, d))
            .unwrap()
    };
    let (q, k, v) = (mk(0.37), mk(0.11), mk(0.23));
    // Warm-up: rayon's pool and gemm's per-thread packing buffers.
    drop(attention_fused(&q, &k, &v).unwrap());
    let before = LIVE.load(SeqCst);
    PEAK.store(before, SeqCst);
    let o = attention_fused(&q, &k, &v).unwrap();
    let peak = PEAK.load(SeqCst) - before;
    let output = s * d * 4;
    let working = peak - output;
    println!(
        "one head x {s} tokens: peak {:.2} MiB above the inputs, of which output {:.2} MiB, working {:.3} MiB (a score matrix would be {} MiB)",
        peak as f64 / 1048576.0,
        output as f64 / 1048576.0,
        working as f64 / 1048576.0,
        (s * s * 4) >> 20
    );
    assert!(
        working < 8 << 20,
        "{working} bytes of attention working memory"
    );
    assert_eq!(o.dims(), &[1, s, d]);
}
