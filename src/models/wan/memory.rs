//! Activation memory of one DiT forward, as a formula a planner can call
//! before anything is loaded.
//!
//! A 720p, 81-frame latent is 75,600 tokens; at that size activations, not
//! weights, decide whether a forward fits. Attention is computed in query
//! key tiles on the CPU (see [`super::flash`]) and in query chunks elsewhere
//! (see [`super::attention::attention_chunk_rows`]), so the peak grows
//! linearly in tokens and the scores add a constant (tiles on the CPU, the
//! score cap elsewhere). With N video tokens, L text tokens, D = dim, F = ffn_dim,
//! H heads of head_dim d, `a` = bytes per activation (the compute dtype) and
//! `m` = bytes per element of a matmul (= a, except bf16 on a CPU without
//! AMX or oneDNN, where candle multiplies in f32: m = 4), o = outputs a
//! linear allocates (1 on our CPU linears, which add the bias in their
//! store: bf16 on AMX, f32 on AVX-512 (`super::sgemm`); 2 where candle's
//! matmul is followed by its bias add), and `[c]` = 1 when c holds else 0:
//!
//! ```text
//! peak = base + max(phases)                          (batch 1, one timestep)
//! base = 2·N·D·a                (the patch tokens and the block's input)
//!      + 4·N·d                  (the RoPE cos/sin tables, f32)
//!      + L·D·a + 13·T·D·4       (embedded text; time embeddings, T = 1 or N)
//! phases, in units of N·D bytes unless marked:
//!   norm + modulate           4 + [a≠4]a   (f32 out, then cast; CPU: a, one fused pass)
//!   self-attn q / k           a + Hq,  2a + Hq    Hq = max([a≠m]m + o·m, a + 8 if a = 4
//!                                                          else 2a + 4)
//!   self-attn (CPU, fused)    4a + 4 + 3[a≠4]·4   + W(N)
//!   cross-attn (CPU, fused)   3a + 4 + [a≠4]·4    + W(N) + 2·L·D·(a + [a≠4]·4) bytes
//!   self-attn (CPU, oneDNN)   5a + O(N, N)        (feature `onednn`; m = a there)
//!   cross-attn (CPU, oneDNN)  4a + O(N, L) + 2·L·D·a bytes
//!   self-attn (CPU, AMX)      5a + X(N)           (bf16 on a CPU with AMX; m = a)
//!   cross-attn (CPU, AMX)     3a + X(L) + 2·L·D·a bytes
//!   self-attn (GPU, chunked)  4a + 2m + 2[a≠m]m   + S(N, N)
//!   cross-attn (GPU, chunked) 3a + 2m + [a≠m]m    + S(N, L) + 4·L·D·m bytes
//!   output projections        3a + [a≠m]m + o·m
//!   gated residual adds       2a + 2[a≠4]·4 + 8 + [a≠4]a   (CPU, fused: 3a)
//!   feed-forward              max(2a + [a≠m]m + 2·(F/D)·m,
//!                                 a + (F/D)(a + [a≠m]m) + 2m) + [a≠m]·D·F·m bytes
//!                             (our CPU linears, GELU in the store: 2a + (F/D)a;
//!                              widened onto `sgemm` (o = 1, m = 4): the larger of
//!                              2a + m + (F/D)m + D·F·m bytes, 2a + m + (F/D)(m + a),
//!                              a + (F/D)(a + m) + m + D·F·m bytes, 2a + (F/D)(a + m) + m)
//! S(Nq, Nk) = q_c + max(2·H·R·Nk·m, H·R·Nk·m + 2·R·D·m) bytes,
//!           R = query rows per chunk = clamp(cap / (H·Nk·m), 1, Nq)
//!           (cap: 256 MiB of scores), q_c = R·D·m if R < Nq else 0
//! W(Nq) = the fused kernel's tiles and gemm's packing of a tile operand,
//!           threads · (4·(R'·256 + R'·d + 2R') + 4·R'·max(256, d) + 4096)
//!           bytes, R' = min(64, Nq) (`super::flash::working_bytes`)
//! O(Nq, Nk) = oneDNN's chunk buffers, H·R·(Nk·(4 + a) + d·(4 + a) + 4) bytes,
//!           R = clamp(4 MiB / (4·H·Nk), 1, Nq) (`super::onednn::working_bytes`);
//!           where R < min(32, Nq) oneDNN declines and the fused terms
//!           hold (the AMX terms come first where AMX takes the shape)
//! X(Nk) = one head's k and v packed for the tile unit, 2·Nk'·d·2 bytes,
//!           Nk' = Nk rounded up to 64 (`super::amx::attention_working_bytes`);
//!           AMX takes bf16 with N ≥ 32 and d a multiple of 32 up to 256
//! ```
//!
//! The phase terms count the tensors live at each step of
//! `WanBlock::forward`, which drops every intermediate as soon as the next
//! exists; the stem's prepare and finish are smaller for every published
//! config but are included. `tests/activation_memory.rs` checks the formula
//! against a counting allocator around real forwards (within 0.1%). For a
//! 14B expert at 75,600 tokens in bf16 on the CPU it gives about 12.4 GiB
//! with the weights widened onto candle's matmul (the feed-forward phase;
//! self-attention peaks at ~10.6 GiB), 10.2 GiB widened onto `super::sgemm`
//! (AVX-512 without AMX: one output per linear), 10.1 GiB
//! with the `onednn` feature (no widened copies: the fused self-attention
//! is the peak), and 5.8 GiB on AMX (`super::amx`: bf16 linears and
//! attention as they are, the GELU in the linear, in either build);
//! per-token timesteps (TI2V) add 13·N·D·4 bytes to the base.

use super::attention::{attention_chunk_rows, attention_score_cap};
use super::flash::working_bytes;
use super::linear::matmul_dtype;
use super::WanConfig;
use candle_core::{DType, Device};

/// Peak activation bytes of one forward (batch 1, one timestep per sample)
/// on the CPU device with the current attention score cap.
pub fn activation_peak_bytes(
    cfg: &WanConfig,
    tokens: usize,
    text_tokens: usize,
    dtype: DType,
) -> u64 {
    activation_peak_bytes_on(
        cfg,
        tokens,
        text_tokens,
        dtype,
        &Device::Cpu,
        false,
        attention_score_cap(),
    )
}

/// [`activation_peak_bytes`] for a given device (which fixes the matmul
/// dtype), per-token timesteps or not, and attention score cap.
pub fn activation_peak_bytes_on(
    cfg: &WanConfig,
    tokens: usize,
    text_tokens: usize,
    dtype: DType,
    device: &Device,
    per_token_timesteps: bool,
    score_cap: usize,
) -> u64 {
    let a = dtype.size_in_bytes() as f64;
    let mm = matmul_dtype(dtype, device);
    // oneDNN and the AMX kernel multiply bf16 as it is: no widened copies.
    let onednn = cfg!(feature = "onednn") && device.is_cpu();
    let amx = super::amx::available() && device.is_cpu();
    let m = if onednn || amx {
        a
    } else {
        mm.size_in_bytes() as f64
    };
    // Our CPU linears (AMX for bf16, `sgemm` for f32) add the bias and
    // apply the feed-forward's GELU in their store: one output per linear.
    let sgemm = device.is_cpu() && super::linear::sgemm_takes_linears();
    let fused_gelu =
        device.is_cpu() && ((amx && dtype == DType::BF16) || (sgemm && dtype == DType::F32));
    // The widened path (bf16 without AMX or oneDNN) multiplies on `sgemm`
    // too, the bias in the store, but runs the GELU as its own pass.
    let one_out = fused_gelu || (sgemm && m == 4.0);
    let outs = if one_out { 1.0 } else { 2.0 };
    let (n, l) = (tokens as f64, text_tokens as f64);
    let (d, f, h) = (cfg.dim as f64, cfg.ffn_dim as f64, cfg.num_heads as f64);
    let head_dim = cfg.head_dim() as f64;
    let nd = n * d;
    let cvt_m = if a != m { m } else { 0.0 };
    let cvt_4 = if a != 4.0 { 4.0 } else { 0.0 };
    let copy_a4 = if a != 4.0 { a } else { 0.0 };
    let r = |f: f64| f.max(0.0);

    // One chunk: its queries (a copy unless the chunk is all of them), the
    // scores and their softmax, then the softmax with the chunk's output
    // and that output transposed into place.
    let scores = |nq: usize, nk: usize| -> f64 {
        let rows = attention_chunk_rows(cfg.num_heads, nq, nk, mm, score_cap);
        let qc = if rows < nq { rows as f64 * d * m } else { 0.0 };
        let (rows, nk) = (rows as f64, nk as f64);
        (qc + 2.0 * h * rows * nk * m).max(qc + h * rows * nk * m + 2.0 * rows * d * m)
    };
    let t = if per_token_timesteps { n } else { 1.0 };
    let base = 2.0 * nd * a + 4.0 * n * head_dim + l * d * a + 13.0 * t * d * 4.0;

    // The q/k chain: the projection, the f32 norm + RoPE output, and its
    // cast for bf16 (a + 8 bounds the f32 chain; the bf16 one, 2a + 4, is
    // what the counting allocator sees once a widened matmul is gone).
    let chain = if a == 4.0 { a + 8.0 } else { 2.0 * a + 4.0 };
    let heads = r(cvt_m + outs * m).max(chain);
    // On the CPU attention is the fused kernel: f32 views of q, k and v
    // (copies when a != 4), its f32 output and per-thread tiles, no scores.
    let (onednn_self, onednn_cross) = if onednn {
        onednn_attention_bytes(cfg, tokens, text_tokens, a)
    } else {
        (None, None)
    };
    let (amx_self, amx_cross) = amx_attention_bytes(cfg, tokens, text_tokens, dtype);
    let (self_attn, cross_attn) = if device.is_cpu() {
        let tiles = |nq: usize| working_bytes(cfg.num_heads, nq, cfg.head_dim()) as f64;
        (
            amx_self
                .or(onednn_self)
                .unwrap_or((4.0 * a + 4.0 + 3.0 * cvt_4) * nd + tiles(tokens)),
            amx_cross.or(onednn_cross).unwrap_or(
                (3.0 * a + 4.0 + cvt_4) * nd + 2.0 * l * d * (a + cvt_4) + tiles(tokens),
            ),
        )
    } else {
        (
            (4.0 * a + 2.0 * m + 2.0 * cvt_m) * nd + scores(tokens, tokens),
            (3.0 * a + 2.0 * m + cvt_m) * nd + scores(tokens, text_tokens) + 4.0 * l * d * m,
        )
    };
    let ratio = f / d;
    let phases = [
        // The CPU writes the modulated norm in the activation dtype directly.
        if device.is_cpu() {
            a * nd
        } else {
            (4.0 + copy_a4) * nd
        },
        (2.0 * a + heads) * nd,
        self_attn,
        cross_attn,
        (3.0 * a + cvt_m + outs * m) * nd,
        // The CPU adds in one fused pass (`fused::gated_add`): x, y, out.
        if device.is_cpu() {
            3.0 * a * nd
        } else {
            (2.0 * a + 2.0 * cvt_4 + 8.0 + copy_a4) * nd
        },
        if fused_gelu {
            // No pre-activation tensor: the GELU is in the linear's store.
            // The block's x2 with the modulated input and the hidden, then
            // with the hidden and the output.
            (2.0 * a + ratio * a) * nd
        } else if one_out {
            // Widened on `sgemm`: the f32 hidden beside its bf16 cast, then
            // the GELU's pass; the hidden widened again for the second
            // linear, its output and that output's cast.
            // The widened weight lives through its product only.
            let w = if cvt_m > 0.0 { d * f * m } else { 0.0 };
            let first = ((2.0 * a + cvt_m + ratio * m) * nd + w)
                .max((2.0 * a + cvt_m + ratio * (m + a)) * nd);
            let second = ((a + ratio * (a + cvt_m) + m) * nd + w)
                .max((2.0 * a + ratio * (a + cvt_m) + m) * nd);
            first.max(second)
        } else {
            (2.0 * a + cvt_m + 2.0 * ratio * m).max(a + ratio * (a + cvt_m) + 2.0 * m) * nd
                + if cvt_m > 0.0 { d * f * m } else { 0.0 }
        },
        prepare_bytes(cfg, n, a, m, per_token_timesteps),
        finish_bytes(cfg, n, a, m, outs),
    ];
    let peak = base + phases.into_iter().fold(0.0, f64::max);
    peak.ceil() as u64
}

/// Self- and cross-attention bytes with the `onednn` feature, each `None`
/// where oneDNN declines (see `onednn::takes`) and the fused kernel runs:
/// the modulated input, q, k and v as they are, the output in their dtype,
/// and the kernel's chunk buffers (`onednn::working_bytes`).
#[cfg(feature = "onednn")]
fn onednn_attention_bytes(
    cfg: &WanConfig,
    tokens: usize,
    text_tokens: usize,
    a: f64,
) -> (Option<f64>, Option<f64>) {
    let nd = tokens as f64 * cfg.dim as f64;
    let l = text_tokens as f64;
    let work = |nk: usize| {
        let (hd, ai) = (cfg.head_dim(), a as usize);
        super::onednn::working_bytes(cfg.num_heads, tokens, nk, hd, ai) as f64
    };
    let takes = |nk: usize| super::onednn::takes(cfg.num_heads, tokens, nk);
    (
        takes(tokens).then(|| 5.0 * a * nd + work(tokens)),
        takes(text_tokens).then(|| 4.0 * a * nd + 2.0 * l * cfg.dim as f64 * a + work(text_tokens)),
    )
}

/// Self- and cross-attention bytes where the AMX kernel takes them (see
/// `amx::takes_attention`; before oneDNN's, which measured slower, and the
/// fused kernel): q, k and
/// v as they are, the modulated input, the bf16 output, and one head's k
/// and v packed (`amx::attention_working_bytes`).
fn amx_attention_bytes(
    cfg: &WanConfig,
    tokens: usize,
    text_tokens: usize,
    dtype: DType,
) -> (Option<f64>, Option<f64>) {
    let a = dtype.size_in_bytes() as f64;
    let (d, hd) = (cfg.dim as f64, cfg.head_dim());
    let nd = tokens as f64 * d;
    let takes = |nk: usize| super::amx::takes_attention(dtype, tokens, nk, hd);
    let work = |nk: usize| super::amx::attention_working_bytes(nk, hd) as f64;
    (
        takes(tokens).then(|| 5.0 * a * nd + work(tokens)),
        takes(text_tokens)
            .then(|| 3.0 * a * nd + 2.0 * text_tokens as f64 * d * a + work(text_tokens)),
    )
}

/// Without the `onednn` feature the fused kernel always runs.
#[cfg(not(feature = "onednn"))]
fn onednn_attention_bytes(_: &WanConfig, _: usize, _: usize, _: f64) -> (Option<f64>, Option<f64>) {
    (None, None)
}

/// The stem's prepare: patches, the patch embedding, and (per-token
/// timesteps) the time embedding of every token.
fn prepare_bytes(cfg: &WanConfig, n: f64, a: f64, m: f64, per_token: bool) -> f64 {
    let p = (cfg.in_dim * cfg.patch_size.iter().product::<usize>()) as f64;
    let d = cfg.dim as f64;
    let patches = n * p * (2.0 * a + m);
    let embed = 2.0 * n * d * m;
    let time = if per_token {
        n * (cfg.freq_dim as f64 * 4.0 + 3.0 * d * 4.0 + 12.0 * d * 4.0)
    } else {
        0.0
    };
    patches + embed + time
}

/// The head and unpatchify after the last block (`outs`: a linear's
/// output tensors, see `o` in the module docs).
fn finish_bytes(cfg: &WanConfig, n: f64, a: f64, m: f64, outs: f64) -> f64 {
    let q = cfg.patch_features_out() as f64;
    let a4 = if a != 4.0 { a } else { 0.0 };
    (4.0 + a4) * n * cfg.dim as f64 + n * q * (outs * m + 2.0 * a + 4.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_linearly_once_attention_is_chunked() {
        let cfg = WanConfig::wan22_t2v_a14b();
        let cap = 256 << 20;
        let at = |n| {
            activation_peak_bytes_on(&cfg, n, 512, DType::BF16, &Device::Cpu, false, cap) as f64
        };
        // Doubling tokens past the point where chunks are one row each
        // roughly doubles the peak; it never squares.
        let (p1, p2) = (at(37_800), at(75_600));
        assert!(p2 / p1 < 2.1 && p2 / p1 > 1.8, "{p1} {p2}");
        // The 720p 81-frame forward of a 14B expert in bf16 on the CPU:
        // the feed-forward phase, ~12.4 GiB with the weights widened per
        // call onto candle's matmul, ~10.2 widened onto `sgemm` (one output
        // per linear, no bias-add copy); on oneDNN, which multiplies bf16 as it is, the fused
        // self-attention (oneDNN declines 40 heads over 75,600 keys), ~10.1;
        // on AMX, linears and attention in bf16 as they are and the GELU in
        // the linear, ~5.8 (the feed-forward phase again).
        let gib = p2 / (1u64 << 30) as f64;
        let want = if super::super::amx::available() {
            5.3..6.3
        } else if cfg!(feature = "onednn") {
            9.6..10.6
        } else if super::super::sgemm::available() {
            9.7..10.7
        } else {
            12.0..13.0
        };
        assert!(want.contains(&gib), "{gib}");
    }
}
