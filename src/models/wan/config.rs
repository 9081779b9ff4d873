//! The Wan DiT hyper-parameters.
//!
//! Most of them are read back from tensor shapes when a checkpoint is opened
//! (see `checkpoint::detect`), so a config is never guessed from a file name.
//! The head count is the one value that shapes cannot tell; it comes from a
//! diffusers `config.json`, the file's metadata, or Wan's fixed head_dim of 128.

/// Hyper-parameters of a Wan 2.x text-to-video DiT (`WanModel` / `WanTransformer3DModel`).
#[derive(Debug, Clone, PartialEq)]
pub struct WanConfig {
    /// Hidden size (`dim`), = num_heads * head_dim.
    pub dim: usize,
    /// Inner size of the feed-forward network.
    pub ffn_dim: usize,
    /// Size of the timestep sinusoid.
    pub freq_dim: usize,
    /// Size of the text-encoder embeddings fed as context (4096 for umT5-XXL).
    pub text_dim: usize,
    /// Latent channels in (16 for T2V; 36 for I2V; 48 for TI2V-5B).
    pub in_dim: usize,
    /// Latent channels out.
    pub out_dim: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    /// Patch size (t, h, w); (1, 2, 2) in every published Wan model.
    pub patch_size: [usize; 3],
    /// Epsilon of the LayerNorms and RMSNorms.
    pub eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
}

impl WanConfig {
    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    /// Features produced by the head per token: prod(patch) * out_dim.
    pub fn patch_features_out(&self) -> usize {
        self.patch_size.iter().product::<usize>() * self.out_dim
    }

    /// Wan 2.2 T2V-A14B, each expert (high-noise and low-noise share this config).
    pub fn wan22_t2v_a14b() -> Self {
        Self {
            dim: 5120,
            ffn_dim: 13824,
            freq_dim: 256,
            text_dim: 4096,
            in_dim: 16,
            out_dim: 16,
            num_heads: 40,
            num_layers: 40,
            patch_size: [1, 2, 2],
            eps: 1e-6,
            rope_theta: 10000.0,
        }
    }

    /// Wan 2.2 I2V-A14B, each expert: the T2V expert with a wider patch
    /// embedding taking [noise 16, mask 4, image latent 16] channels.
    pub fn wan22_i2v_a14b() -> Self {
        Self {
            in_dim: 36,
            ..Self::wan22_t2v_a14b()
        }
    }

    /// Wan 2.2 TI2V-5B: the 48-channel latent of the Wan 2.2 VAE, with
    /// per-token timesteps (first-frame tokens at t = 0 when an image is given).
    pub fn wan22_ti2v_5b() -> Self {
        Self {
            dim: 3072,
            ffn_dim: 14336,
            freq_dim: 256,
            text_dim: 4096,
            in_dim: 48,
            out_dim: 48,
            num_heads: 24,
            num_layers: 30,
            patch_size: [1, 2, 2],
            eps: 1e-6,
            rope_theta: 10000.0,
        }
    }

    /// The tiny model of the golden fixtures (`tests/fixtures/wan_tiny/config.json`).
    pub fn fixture_tiny() -> Self {
        Self {
            dim: 48,
            ffn_dim: 64,
            freq_dim: 256,
            text_dim: 32,
            in_dim: 16,
            out_dim: 16,
            num_heads: 2,
            num_layers: 2,
            patch_size: [1, 2, 2],
            eps: 1e-6,
            rope_theta: 10000.0,
        }
    }
}
