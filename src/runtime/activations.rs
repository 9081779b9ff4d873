//! Working memory of each operation, estimated from shapes alone.
//!
//! `baton plan` has no tensors to measure, so it needs the bytes an operation
//! allocates beyond the weights as a function of its inputs. The formulas
//! follow what the code holds at its widest point; each carries a constant
//! fitted to peak measurements on the CPU (`tests/activation_memory.rs`
//! checks the DiT's against a counting allocator; `demo_pipeline.rs` and
//! `vae_runtime.rs` check the plan's peaks against measured runs), so they
//! describe this implementation, not an ideal one.
//! Every figure is in bytes; activations on the CPU are f32 whatever the
//! weights' dtype, because candle's CPU matmul has no half kernels.

use crate::models::umt5::UmT5Config;
use crate::models::wan::WanConfig;
use crate::models::wan_vae::VaeKind;
use candle_core::DType;

const F32: u64 = 4;

/// Video tokens of a latent [B, C, F, H, W] under the model's patch size.
pub fn dit_tokens(cfg: &WanConfig, latent: &[usize]) -> u64 {
    let [pt, ph, pw] = cfg.patch_size;
    match latent {
        [b, _, f, h, w] => (b * f.div_ceil(pt) * h.div_ceil(ph) * w.div_ceil(pw)) as u64,
        _ => 0,
    }
}

/// Peak working set of one DiT forward over `tokens` video tokens and
/// `text` context rows with weights in `dtype`: the model's own formula,
/// checked against a counting allocator (see `models::wan::memory`).
pub fn dit_forward(cfg: &WanConfig, tokens: u64, text: u64, dtype: DType) -> u64 {
    crate::models::wan::activation_peak_bytes(cfg, tokens as usize, text as usize, dtype)
}

/// Peak working set of a sampling pass: one forward (the conditional and
/// unconditional passes run one after the other) plus the sampler's own
/// latent-sized tensors (x, noise, both predictions, the denoised estimate
/// and a multistep history).
pub fn dit_sample(cfg: &WanConfig, latent: &[usize], text: u64, dtype: DType) -> u64 {
    let elems: u64 = latent.iter().map(|&d| d as u64).product();
    dit_forward(cfg, dit_tokens(cfg, latent), text, dtype) + F32 * 8 * elems
}

/// Output size of a decode: [B, 3, 1 + 4 (F - 1), s H, s W] from
/// [B, C, F, H, W], s the spatial factor (Wan 2.1: 8, Wan 2.2: 16).
pub fn vae_decoded_shape(latent: &[usize], s: usize) -> Vec<usize> {
    match latent {
        [b, _, f, h, w] => vec![*b, 3, 1 + 4 * (f.max(&1) - 1), s * h, s * w],
        other => other.to_vec(),
    }
}

/// Feature-map bytes per output pixel, per decoded frame in a chunk and per
/// unit of `base_dim`, at the decoder's widest point (its full-resolution
/// stages: the upsampling conv's input, the per-tap conv outputs being
/// summed, candle's NHWC copy and the causal caches). Fitted on the CPU:
/// 164 MiB at 160x160 and 651 MiB at 320x320 for the width-16 tiny VAE
/// (linear in pixels), and 978 MiB peak for a width-4 VAE at 832x480 x 81.
const VAE_FEATURES_PER_PIXEL: u64 = 24;

/// Peak working set of a VAE decode. The decoder runs one latent frame at a
/// time (four output frames after the first), so the feature maps of one
/// chunk are live at once beside the frames decoded so far; at the end the
/// decoded chunks are concatenated, so the output is briefly held twice.
pub fn vae_decode(cfg: &VaeKind, latent: &[usize]) -> u64 {
    let [b, f, h, w] = match latent {
        [b, _, f, h, w] => [*b, *f, *h, *w],
        _ => return 0,
    };
    let out: u64 = vae_decoded_shape(latent, cfg.spatial_factor())
        .iter()
        .map(|&d| d as u64)
        .product();
    let pixels = (b * 64 * h * w) as u64;
    let frames_per_chunk = if f > 1 { 4 } else { 1 };
    let chunk = VAE_FEATURES_PER_PIXEL * cfg.full_res_width() as u64 * pixels * frames_per_chunk;
    F32 * (out + chunk).max(2 * out)
}

/// Peak working set of a VAE encode of a video [B, 3, T, H, W]: the encoder
/// reads four frames at a time, so it mirrors the decoder.
pub fn vae_encode(cfg: &VaeKind, video: &[usize]) -> u64 {
    match video {
        [b, _, t, h, w] => {
            let s = cfg.spatial_factor();
            let latent = [*b, cfg.z_dim(), (t.max(&1) - 1) / 4 + 1, h / s, w / s];
            vae_decode(cfg, &latent)
        }
        _ => 0,
    }
}

/// Peak working set of a umT5 encode of `rows` tokens: hidden states,
/// q/k/v and the gated FFN per layer, and the position-bias scores.
pub fn text_encode(cfg: &UmT5Config, rows: u64) -> u64 {
    let (d, ff) = (cfg.d_model as u64, cfg.d_ff as u64);
    let inner = (cfg.num_heads * cfg.d_kv) as u64;
    let heads = cfg.num_heads as u64;
    F32 * (3 * rows * d + 3 * rows * inner + 3 * rows * ff + 2 * rows * rows * heads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_the_patch_size() {
        let cfg = WanConfig::wan22_t2v_a14b();
        // 720p, 81 frames: 21 x 90 x 160 latent -> 21 x 45 x 80 tokens.
        assert_eq!(dit_tokens(&cfg, &[1, 16, 21, 90, 160]), 75_600);
    }

    #[test]
    fn dit_activations_grow_linearly_once_scores_are_chunked() {
        let cfg = WanConfig::wan22_t2v_a14b();
        let a = dit_forward(&cfg, 40_000, 512, DType::BF16);
        let b = dit_forward(&cfg, 80_000, 512, DType::BF16);
        let ratio = b as f64 / a as f64;
        assert!((1.9..2.1).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn decoded_shape_matches_the_vae_compression() {
        assert_eq!(
            vae_decoded_shape(&[1, 16, 21, 60, 104], 8),
            vec![1, 3, 81, 480, 832]
        );
    }
}
