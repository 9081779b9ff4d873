//! torchsde's Brownian tree (0.2.6, `BrownianTree` → `BrownianInterval` with
//! `halfway_tree=True`, no Lévy area) as ComfyUI's `BrownianTreeNoiseSampler`
//! uses it for the SDE samplers (`dpmpp_sde`, `dpmpp_2m_sde`,
//! `dpmpp_2m_sde_heun`, `dpmpp_3m_sde` and their `_gpu` names).
//!
//! The construction follows tests/fixtures/comfy/README.md §8.6: numpy's
//! `SeedSequence` hash names one seed per tree node, each node's Gaussian is
//! a fresh `torch.randn` with that seed (the torch-exact [`TorchGenerator`]),
//! the Lévy bridge splits a parent's increment in f32 with f64 coefficients,
//! and every boundary is quantised to 6 decimals. On the CPU this reproduces
//! ComfyUI's draws bit for bit. ComfyUI's `_gpu` names build the tree on the
//! latent's device, so on a CUDA card their draws come from the CUDA
//! generator and differ; baton's tree always draws on the CPU, which is
//! ComfyUI's result with `--cpu` (and for the non-`_gpu` names everywhere).
//!
//! Nothing is cached between draws: a draw walks from the root to the nodes
//! that cover its interval depth-first, holding one increment per tree level
//! (about 20 levels at torchsde's 1e-6 resolution), so a draw needs about 20
//! latent-sized f32 buffers of host memory and one `randn` of the latent's
//! size per node on its way (ComfyUI's torchsde caches up to 45 nodes).

use super::noise::TorchGenerator;

const POOL: usize = 24;
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;

/// `n` as little-endian 32-bit words (`[0]` for 0), as numpy splits entropy.
fn words(mut n: u64) -> Vec<u32> {
    let mut w = Vec::new();
    loop {
        w.push(n as u32);
        n >>= 32;
        if n == 0 {
            return w;
        }
    }
}

/// numpy's `SeedSequence(entropy, spawn_key, pool_size=24).generate_state(n)`.
pub fn seed_sequence(entropy: u64, spawn_key: &[u64], n: usize) -> Vec<u32> {
    let mut ent = words(entropy);
    if !spawn_key.is_empty() {
        ent.resize(ent.len().max(POOL), 0);
        for &k in spawn_key {
            ent.extend(words(k));
        }
    }
    let mut hc = INIT_A;
    let mut hashmix = |v: u32| -> u32 {
        let mut v = v ^ hc;
        hc = hc.wrapping_mul(MULT_A);
        v = v.wrapping_mul(hc);
        v ^ (v >> 16)
    };
    let mix = |x: u32, y: u32| -> u32 {
        let r = MIX_MULT_L
            .wrapping_mul(x)
            .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> 16)
    };
    let mut pool = [0u32; POOL];
    for (i, p) in pool.iter_mut().enumerate() {
        *p = hashmix(ent.get(i).copied().unwrap_or(0));
    }
    for src in 0..POOL {
        for dst in 0..POOL {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    for &w in ent.iter().skip(POOL) {
        for p in pool.iter_mut() {
            let h = hashmix(w);
            *p = mix(*p, h);
        }
    }
    let mut h = INIT_B;
    (0..n)
        .map(|i| {
            let mut v = pool[i % POOL] ^ h;
            h = h.wrapping_mul(MULT_B);
            v = v.wrapping_mul(h);
            v ^ (v >> 16)
        })
        .collect()
}

/// Python's `round(v, 6)`: the nearest 6-decimal value, read back as the
/// nearest double (Rust's formatting and parsing are both correctly rounded).
fn r6(v: f64) -> f64 {
    format!("{v:.6}").parse().expect("a formatted float parses")
}

/// `torch.randn(numel, generator=torch.Generator().manual_seed(seed))`.
fn randn(seed: u32, numel: usize) -> Vec<f32> {
    TorchGenerator::new(seed as u64).randn(numel)
}

/// A Brownian tree over `[σmin, σmax]` for one latent shape and one seed.
#[derive(Debug, Clone)]
pub struct BrownianTree {
    seed: u64,
    numel: usize,
    /// The rounded root bounds.
    start: f64,
    end: f64,
    /// The root's increment `W(start, end)`.
    w_root: Vec<f32>,
}

impl BrownianTree {
    /// ComfyUI's `BrownianTreeNoiseSampler(x, σmin, σmax, seed)`: `t0 = σmin`,
    /// `t1 = σmax` (f32 values), `numel` elements per draw.
    pub fn new(sigma_min: f32, sigma_max: f32, seed: u64, numel: usize) -> Self {
        let (t0, t1) = (sigma_min as f64, sigma_max as f64);
        let root = seed_sequence(seed, &[], 3);
        let scale = (t1 - t0).sqrt() as f32;
        let w_root = randn(root[0], numel)
            .into_iter()
            .map(|v| v * scale)
            .collect();
        Self {
            seed,
            numel,
            start: r6(t0),
            end: r6(t1),
            w_root,
        }
    }

    /// The tree ComfyUI builds for a sampler's sigma list: σmin is the
    /// smallest nonzero sigma, σmax the largest (before any offset of σ0).
    pub fn for_sigmas(sigmas: &[f32], seed: u64, numel: usize) -> Self {
        let min = sigmas
            .iter()
            .copied()
            .filter(|&s| s > 0.0)
            .fold(f32::INFINITY, f32::min);
        let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        Self::new(min, max, seed, numel)
    }

    /// The node seed a split of node (key, depth) uses for its bridge.
    /// (The root splits with spawn key (0, 0), not with its own W seed.)
    fn split_seed(&self, key: u64, depth: u64) -> u32 {
        seed_sequence(self.seed, &[key, depth], 4)[0]
    }

    /// The increment `W(σn) − W(σ)` scaled to unit variance:
    /// `(W·sign)/sqrt|σn − σ|`, ComfyUI's noise-sampler output. The square
    /// root is the correctly rounded one; torch's f32 `sqrt` on the CPU is
    /// occasionally 1 ulp off it (fixture README §7), and then so is the draw.
    pub fn draw(&self, sigma: f32, sigma_next: f32) -> Vec<f32> {
        let div = (sigma_next - sigma).abs().sqrt();
        let mut w = self.increment(sigma, sigma_next);
        w.iter_mut().for_each(|v| *v /= div);
        w
    }

    /// `W(σn) − W(σ)` as a signed increment (`W·sign`, before the scaling).
    pub fn increment(&self, sigma: f32, sigma_next: f32) -> Vec<f32> {
        let (a, b) = (sigma as f64, sigma_next as f64);
        let sign: f32 = if a > b { -1.0 } else { 1.0 };
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let clamp = |v: f64| v.max(self.start).min(self.end);
        let (ta, tb) = (r6(clamp(lo)), r6(clamp(hi)));
        let mut acc: Option<Vec<f32>> = None;
        if ta != tb {
            self.cover(&self.w_root, self.start, self.end, 0, 0, ta, tb, &mut acc);
        }
        let w = acc.unwrap_or_else(|| vec![0.0; self.numel]);
        w.into_iter().map(|v| v * sign).collect()
    }

    /// Adds the increments of the nodes covering `[ta, tb]` under node
    /// `[a, e]` (increment `w`) to `acc`, left to right.
    #[allow(clippy::too_many_arguments)]
    fn cover(
        &self,
        w: &[f32],
        a: f64,
        e: f64,
        key: u64,
        depth: u64,
        ta: f64,
        tb: f64,
        acc: &mut Option<Vec<f32>>,
    ) {
        if ta == a && tb == e {
            match acc {
                None => *acc = Some(w.to_vec()),
                Some(s) => s.iter_mut().zip(w).for_each(|(s, v)| *s += v),
            }
            return;
        }
        let m = r6(0.5 * (e + a));
        let mut child = self.bridge(w, a, m, e, key, depth);
        let (lk, rk, d) = (2 * key, 2 * key + 1, depth + 1);
        // The right child's increment is the parent's minus the left's,
        // computed in place: one latent-sized buffer per tree level.
        let to_right = |c: &mut Vec<f32>| c.iter_mut().zip(w).for_each(|(l, p)| *l = p - *l);
        if tb <= m {
            self.cover(&child, a, m, lk, d, ta, tb, acc);
        } else if ta >= m {
            to_right(&mut child);
            self.cover(&child, m, e, rk, d, ta, tb, acc);
        } else {
            self.cover(&child, a, m, lk, d, ta, m, acc);
            to_right(&mut child);
            self.cover(&child, m, e, rk, d, m, tb, acc);
        }
    }

    /// The Lévy bridge: the left child's increment of node `[a, e]` split at `m`.
    fn bridge(&self, w: &[f32], a: f64, m: f64, e: f64, key: u64, depth: u64) -> Vec<f32> {
        let (ld, rd, hr) = (m - a, e - m, 1.0 / (e - a));
        let z = randn(self.split_seed(key, depth), self.numel);
        let (ld32, hr32) = (ld as f32, hr as f32);
        let c = (ld * rd * hr).sqrt() as f32;
        w.iter()
            .zip(z)
            .map(|(&p, z)| (p * ld32) * hr32 + c * z)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_pythons() {
        assert_eq!(r6(0.4166666567325592), 0.416667);
        assert_eq!(r6(0.9999799728393555), 0.99998);
        assert_eq!(r6(1.0), 1.0);
    }
}
