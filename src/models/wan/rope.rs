//! Wan's 3-D rotary position embedding: the (t, h, w) split of each head's
//! channel pairs, the cos/sin table for one token grid, and its application.
//!
//! Apart from `dit.rs` because the table is computed once per forward and
//! carried to every block in `dit::Prepared`, and the parity tests check it on
//! its own against diffusers. `dit.rs` re-exports its public items.

use candle_core::{Device, Result, Tensor};

use super::WanConfig;

/// RoPE table for the self-attention of one token grid.
#[derive(Debug, Clone)]
pub struct Rope {
    /// cos of the rotation angle [S, head_dim / 2], f32, one column per channel pair.
    pub cos: Tensor,
    /// sin of the rotation angle [S, head_dim / 2], f32.
    pub sin: Tensor,
}

impl Rope {
    /// (cos, sin) [S, head_dim] with each pair's value repeated for its two
    /// channels, the layout diffusers uses for its tables.
    pub fn interleaved(&self) -> Result<(Tensor, Tensor)> {
        let rep = |t: &Tensor| -> Result<Tensor> {
            let (s, c) = t.dims2()?;
            t.unsqueeze(2)?.broadcast_as((s, c, 2))?.reshape((s, 2 * c))
        };
        Ok((rep(&self.cos)?, rep(&self.sin)?))
    }
}

/// Complex slots (channel pairs) of the head dim given to the (t, h, w) axes:
/// c = head_dim / 2 split as [c - 2 * (c / 3), c / 3, c / 3].
pub fn rope_axis_slots(head_dim: usize) -> [usize; 3] {
    let c = head_dim / 2;
    [c - 2 * (c / 3), c / 3, c / 3]
}

/// RoPE table for a patched grid (F', H', W'): tokens in (f, h, w) row-major
/// order, positions from 0, pairs (2i, 2i+1) rotated; within an axis of n slots
/// slot j turns at theta^(-2j / 2n). Angles in f64, cast to f32 at the end.
pub fn rope_table(cfg: &WanConfig, grid: [usize; 3], device: &Device) -> Result<Rope> {
    let head_dim = cfg.head_dim();
    if !head_dim.is_multiple_of(2) {
        candle_core::bail!("wan rope: head_dim {head_dim} is odd")
    }
    let slots = rope_axis_slots(head_dim);
    let inv_freq: Vec<Vec<f64>> = slots
        .iter()
        .map(|&n| {
            let width = (2 * n) as f64;
            (0..n)
                .map(|j| 1.0 / cfg.rope_theta.powf((2 * j) as f64 / width))
                .collect()
        })
        .collect();
    let c = head_dim / 2;
    let s = grid.iter().product::<usize>();
    let mut cos = Vec::with_capacity(s * c);
    let mut sin = Vec::with_capacity(s * c);
    for f in 0..grid[0] {
        for h in 0..grid[1] {
            for w in 0..grid[2] {
                for (pos, freqs) in [f, h, w].iter().zip(&inv_freq) {
                    for fr in freqs {
                        let a = *pos as f64 * fr;
                        cos.push(a.cos() as f32);
                        sin.push(a.sin() as f32);
                    }
                }
            }
        }
    }
    Ok(Rope {
        cos: Tensor::from_vec(cos, (s, c), device)?,
        sin: Tensor::from_vec(sin, (s, c), device)?,
    })
}

/// Rotates channel pairs (2i, 2i+1) of x [B, H, S, head_dim] (contiguous, f32).
pub fn apply_rope(x: &Tensor, rope: &Rope) -> Result<Tensor> {
    candle_nn::rotary_emb::rope_i(x, &rope.cos, &rope.sin)
}
