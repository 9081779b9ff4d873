//! The CPU linears alone, at the DiT bench's shapes, run by hand:
//!
//! ```text
//! cargo bench --bench linears            # f32 (AVX-512 kernel) and bf16 (AMX), GFLOP/s
//! cargo bench --bench linears -- cold 16 # each call on one of 16 weights (none cached)
//! cargo bench --bench linears -- dirty   # x rewritten by a parallel pass before each call
//! ```
//!
//! Why: `baton bench speed`'s profile gives the linears' share of a forward,
//! not what limits them. This separates the kernel's own speed (warm, one
//! weight) from what a forward adds: weights read once from memory (`cold`)
//! and an input just written by other threads (`dirty`). It installs the
//! binary's allocator, so its buffers start on cache lines as `baton`'s do.
//! Best of 15 calls per shape; a kernel the CPU lacks prints "n/a".

use baton::checkpoint::mapped::Allocator;
use baton::models::wan::{amx, sgemm};
use candle_core::{DType, Device, Result, Tensor};

#[global_allocator]
static ALLOC: Allocator = Allocator;

/// (rows, K, N): q/k/v/o, the feed-forward's two, cross-attention's k/v.
const SHAPES: [(usize, usize, usize); 4] = [
    (768, 1024, 1024),
    (768, 1024, 4096),
    (768, 4096, 1024),
    (512, 1024, 1024),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let copies = match args.iter().position(|a| a == "cold") {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(16),
        None => 1,
    };
    let dirty = args.iter().any(|a| a == "dirty");
    println!(
        "best of 15 calls; {copies} weight(s) per shape; x rewritten before each call: {dirty}"
    );
    println!("| shape (M x K x N) | f32 ms | f32 GFLOP/s | bf16 ms | bf16 GFLOP/s |");
    println!("|---|---|---|---|---|");
    for (m, k, n) in SHAPES {
        let f = best(m, k, n, DType::F32, copies, dirty)?;
        let b = best(m, k, n, DType::BF16, copies, dirty)?;
        let gf = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
        let cell = |t: Option<f64>| match t {
            Some(s) => format!("{:.3} | {:.0}", s * 1e3, gf(s)),
            None => "n/a | n/a".into(),
        };
        println!("| {m} x {k} x {n} | {} | {} |", cell(f), cell(b));
    }
    Ok(())
}

/// The best time of one linear `x [m, k] · wᵀ + b` in `dtype`, or `None`
/// where this CPU lacks the kernel.
fn best(
    m: usize,
    k: usize,
    n: usize,
    dtype: DType,
    copies: usize,
    dirty: bool,
) -> Result<Option<f64>> {
    let dev = Device::Cpu;
    let mut x = Tensor::randn(0f32, 1.0, (m, k), &dev)?.to_dtype(dtype)?;
    let ws = (0..copies)
        .map(|_| Tensor::randn(0f32, 0.03, (n, k), &dev)?.to_dtype(dtype))
        .collect::<Result<Vec<_>>>()?;
    let b = Tensor::randn(0f32, 1.0, n, &dev)?;
    let mut best = f64::MAX;
    for i in 0..15 {
        if dirty {
            x = x.affine(1.0, 0.0)?;
        }
        let w = &ws[i % copies];
        let t = std::time::Instant::now();
        let y = match dtype {
            DType::F32 => sgemm::linear(&x, w, Some(&b), false)?,
            _ => amx::linear_into(&x, w, Some(&b), DType::BF16)?,
        };
        let dt = t.elapsed().as_secs_f64();
        if y.is_none() {
            return Ok(None);
        }
        best = best.min(dt);
    }
    Ok(Some(best))
}
