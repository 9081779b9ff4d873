//! Seeded noise bit-compatible with `torch.manual_seed(s); torch.randn(shape)` on the CPU.
//!
//! ComfyUI draws its initial latent noise this way, always on the CPU, so a
//! seed copied from a workflow gives the same noise here. We reproduce the
//! AVX2 kernel (what ordinary x86-64 PCs run): MT19937 uniforms and a
//! Box-Muller transform in blocks of 16 with Cephes log/sincos polynomials and
//! fused multiply-adds. Tensors under 16 elements take torch's scalar
//! double-precision path instead.

/// 32-bit Mersenne Twister, seeded as torch's `at::mt19937` (low 32 bits of the seed).
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed as u32;
        for i in 1..624 {
            state[i] = 1812433253u32
                .wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = v;
        }
        self.index = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    fn uniform24(&mut self) -> f32 {
        (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    fn uniform53(&mut self) -> f64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (((hi << 32) | lo) & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// `torch.manual_seed(seed); torch.randn(numel)` as f32 values in row-major order.
pub fn torch_randn(seed: u64, numel: usize) -> Vec<f32> {
    TorchGenerator::new(seed).randn(numel)
}

/// A seeded `torch.Generator` on the CPU: successive `randn` calls continue one
/// MT19937 stream, as ComfyUI's default noise sampler draws ancestral noise
/// (`torch.Generator().manual_seed(seed)`, then one `randn` per step).
pub struct TorchGenerator {
    rng: Mt19937,
    /// The second value of the last scalar Box-Muller pair (torch caches it in the generator).
    cached_normal: Option<f64>,
}

impl TorchGenerator {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Mt19937::new(seed),
            cached_normal: None,
        }
    }

    /// The next `torch.randn(numel, generator=g)`.
    pub fn randn(&mut self, numel: usize) -> Vec<f32> {
        if numel < 16 {
            return self.scalar_normals(numel);
        }
        let rng = &mut self.rng;
        let mut data: Vec<f32> = (0..numel).map(|_| rng.uniform24()).collect();
        let mut i = 0;
        while i + 16 <= numel {
            box_muller_16(&mut data[i..i + 16]);
            i += 16;
        }
        if !numel.is_multiple_of(16) {
            let tail = numel - 16;
            for v in &mut data[tail..] {
                *v = rng.uniform24();
            }
            box_muller_16(&mut data[tail..]);
        }
        data
    }

    /// torch's `normal_distribution<double>` path, used for fewer than 16 elements.
    fn scalar_normals(&mut self, numel: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(numel);
        for _ in 0..numel {
            if let Some(c) = self.cached_normal.take() {
                out.push(c as f32);
                continue;
            }
            let u1 = self.rng.uniform53();
            let u2 = self.rng.uniform53();
            let r = (-2.0 * (-u2).ln_1p()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * u1;
            self.cached_normal = Some(r * theta.sin());
            out.push((r * theta.cos()) as f32);
        }
        out
    }
}

fn box_muller_16(block: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0 - block[j];
        let u2 = block[j + 8];
        let radius = (-2.0 * log_ps(u1)).sqrt();
        let theta = 6.2831855_f32 * u2;
        let (s, c) = sincos_ps(theta);
        block[j] = radius * c;
        block[j + 8] = radius * s;
    }
}

/// Cephes `logf` as in ATen's `avx_mathfun.h` (`log256_ps`), FMA-contracted like GCC builds it.
#[allow(clippy::excessive_precision)]
fn log_ps(x: f32) -> f32 {
    let x = x.max(f32::from_bits(0x0080_0000));
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32 + 1.0;
    let mut m = f32::from_bits((bits & 0x807f_ffff) | 0.5f32.to_bits());
    // Cephes' SQRTHF, 0.707106781186547524, is this constant in f32.
    if m < std::f32::consts::FRAC_1_SQRT_2 {
        e -= 1.0;
        m = (m - 1.0) + m;
    } else {
        m -= 1.0;
    }
    let z = m * m;
    let mut y = 7.0376836292E-2_f32;
    for p in [
        -1.1514610310E-1_f32,
        1.1676998740E-1,
        -1.2420140846E-1,
        1.4249322787E-1,
        -1.6668057665E-1,
        2.0000714765E-1,
        -2.4999993993E-1,
        3.3333331174E-1,
    ] {
        y = y.mul_add(m, p);
    }
    y *= m;
    y = y.mul_add(z, e * -2.12194440e-4);
    y -= z * 0.5;
    (m + y) + e * 0.693359375
}

/// Cephes `sincosf` as in ATen's `avx_mathfun.h` (`sincos256_ps`). Returns (sin, cos).
#[allow(clippy::excessive_precision)]
fn sincos_ps(x: f32) -> (f32, f32) {
    let mut s_sign = x.to_bits() & 0x8000_0000;
    let x = x.abs();
    let mut j = (x * 1.27323954473516_f32) as i32;
    j = (j + 1) & !1;
    let y = j as f32;
    let mut x = y.mul_add(-0.78515625, x);
    x = y.mul_add(-2.4187564849853515625e-4, x);
    x = y.mul_add(-3.77489497744594108e-8, x);
    s_sign ^= ((j & 4) as u32) << 29;
    let c_sign = ((!(j - 2) & 4) as u32) << 29;
    let poly = (j & 2) == 0;
    let z = x * x;
    let mut yc = 2.443315711809948E-5_f32
        .mul_add(z, -1.388731625493765E-3)
        .mul_add(z, 4.166664568298827E-2);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;
    let mut ys = (-1.9515295891E-4_f32)
        .mul_add(z, 8.3321608736E-3)
        .mul_add(z, -1.6666654611E-1);
    ys *= z;
    ys = ys.mul_add(x, x);
    let (sin, cos) = if poly { (ys, yc) } else { (yc, ys) };
    (
        f32::from_bits(sin.to_bits() ^ s_sign),
        f32::from_bits(cos.to_bits() ^ c_sign),
    )
}
