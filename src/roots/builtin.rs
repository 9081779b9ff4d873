//! Built-in tiny models of the real architectures, so every script runs
//! without downloads.
//!
//! `builtin:wan-tiny-high` and `builtin:wan-tiny-low` are real Wan DiT
//! checkpoints (original / ComfyUI key layout, safetensors, f32) with
//! deterministic seeded random weights, written once into the cache directory.
//! They are sized (about 150 MB each) so that memory effects are visible.
//! `builtin:umt5-tiny` is a umT5 encoder with umT5-XXL's output width (4096, what
//! the DiT's text embedding takes) and a tiny SentencePiece vocabulary stored
//! inside the checkpoint as ComfyUI's text-encoder files do (`spiece_model`).
//! `builtin:wan-vae-tiny` is a Wan 2.1 VAE at a sixth of the real width.
//! The image-to-video set (`builtin_i2v.rs`): two I2V experts (36 input
//! channels) with a LoRA each, a TI2V-5B-shaped model and a Wan 2.2 VAE.
//! Their outputs are noise-like: the weights are random, not trained.

use crate::models::umt5::UmT5Config;
use crate::models::wan::WanConfig;
use crate::models::wan_vae::WanVaeConfig;
use crate::sampling::noise::Mt19937;
#[path = "builtin_i2v.rs"]
pub mod tiny_i2v;
use std::path::{Path, PathBuf};

/// Bump when the generator changes, so stale cached files are not reused.
const VERSION: &str = "1";

/// The tiny SentencePiece model (480 pieces, byte fallback) the built-in
/// encoder carries; the same file the umT5 fixtures use.
const TINY_SPIECE: &[u8] = include_bytes!("../../tests/fixtures/umt5_tiny/spiece.model");

/// The built-in text encoder: umT5-XXL's width and position buckets, two
/// blocks, the tiny vocabulary (480 pieces + 32 sentinel ids).
pub fn tiny_umt5_config() -> UmT5Config {
    UmT5Config {
        vocab_size: 512,
        d_model: 4096,
        d_kv: 64,
        num_heads: 2,
        d_ff: 256,
        num_layers: 2,
        ..UmT5Config::xxl()
    }
}

/// The built-in architecture: Wan's head_dim of 128 and text_dim of 4096
/// (umT5-XXL), with a small width and depth.
pub fn tiny_config() -> WanConfig {
    WanConfig {
        dim: 512,
        ffn_dim: 2048,
        freq_dim: 256,
        text_dim: 4096,
        in_dim: 16,
        out_dim: 16,
        num_heads: 4,
        num_layers: 8,
        patch_size: [1, 2, 2],
        eps: 1e-6,
        rope_theta: 10000.0,
    }
}

/// Names `builtin:` accepts, with their weight seeds.
pub const BUILTINS: &[(&str, u64)] = &[
    ("wan-tiny-high", 0x5EED_0001),
    ("wan-tiny-low", 0x5EED_0002),
    ("umt5-tiny", 0x5EED_0003),
    ("wan-vae-tiny", 0x5EED_0004),
    ("wan-tiny-i2v-high", 0x5EED_0005),
    ("wan-tiny-i2v-low", 0x5EED_0006),
    ("wan-tiny-ti2v", 0x5EED_0007),
    ("wan22-vae-tiny", 0x5EED_0008),
    ("lora-tiny-i2v-high", 0x5EED_0009),
    ("lora-tiny-i2v-low", 0x5EED_000A),
];

/// The built-in VAE: Wan 2.1's structure (z_dim 16, 8x spatial, 4x temporal)
/// at a sixth of its width, so decoding is quick on a CPU.
pub fn tiny_vae_config() -> WanVaeConfig {
    WanVaeConfig::wan21_width(16)
}

/// Writes the built-in `name` (one of [`BUILTINS`]) to `path`.
pub fn write(name: &str, seed: u64, path: &Path) -> Result<(), String> {
    match name {
        "umt5-tiny" => write_umt5_tiny(path, &tiny_umt5_config(), seed),
        "wan-vae-tiny" => write_vae_tiny(path, &tiny_vae_config(), seed),
        "wan-tiny-i2v-high" | "wan-tiny-i2v-low" => {
            write_tiny(path, &tiny_i2v::i2v_config(), seed, name)
        }
        "wan-tiny-ti2v" => write_tiny(path, &tiny_i2v::ti2v_config(), seed, name),
        "wan22-vae-tiny" => tiny_i2v::write_vae22(path, &tiny_i2v::vae22_config(), seed),
        "lora-tiny-i2v-high" | "lora-tiny-i2v-low" => {
            tiny_i2v::write_lora(path, &tiny_i2v::i2v_config(), seed, name)
        }
        _ => write_tiny(path, &tiny_config(), seed, name),
    }
}

/// Directory for generated files: `$BATON_CACHE_DIR`, else the user cache dir.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BATON_CACHE_DIR") {
        return PathBuf::from(d);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("baton")
}

/// Returns the path of a built-in checkpoint, writing it first if needed.
pub fn materialise(name: &str) -> Result<PathBuf, String> {
    let seed = BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            let names: Vec<String> = BUILTINS
                .iter()
                .map(|(n, _)| format!("builtin:{n}"))
                .collect();
            format!(
                "unknown built-in model 'builtin:{name}' (available: {})",
                names.join(", ")
            )
        })?;
    let dir = cache_dir().join("builtin");
    let path = dir.join(format!("{name}-v{VERSION}.safetensors"));
    if !path.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        tracing::info!("writing built-in model {name} to {}", path.display());
        write(name, seed, &path)?;
    }
    Ok(path)
}

/// Writes a Wan DiT checkpoint with seeded weights (see [`write_seeded`]).
pub fn write_tiny(path: &Path, cfg: &WanConfig, seed: u64, label: &str) -> Result<(), String> {
    let meta = [("num_heads", cfg.num_heads.to_string())];
    write_seeded(path, &wan_tensor_specs(cfg), &[], &meta, seed, label)
}

/// Writes a umT5 encoder with seeded weights and the tiny SentencePiece model
/// embedded as a `spiece_model` u8 tensor.
pub fn write_umt5_tiny(path: &Path, cfg: &UmT5Config, seed: u64) -> Result<(), String> {
    let specs: Vec<Spec> = cfg
        .expected_shapes()
        .into_iter()
        .map(|(key, shape)| {
            let init = if key.ends_with("layer_norm.weight") {
                Init::Norm
            } else if key == "shared.weight" || key.ends_with("relative_attention_bias.weight") {
                Init::Embedding
            } else {
                Init::Weight { fan_in: shape[1] }
            };
            (key, shape, init)
        })
        .collect();
    let raw = [("spiece_model".to_string(), TINY_SPIECE.to_vec())];
    write_seeded(path, &specs, &raw, &[], seed, "umt5-tiny")
}

/// Writes a Wan VAE (original layout) with seeded weights.
pub fn write_vae_tiny(path: &Path, cfg: &WanVaeConfig, seed: u64) -> Result<(), String> {
    let specs: Vec<Spec> = cfg
        .expected_shapes()
        .into_iter()
        .map(|(key, shape)| {
            let init = if key.ends_with("gamma") {
                Init::Norm
            } else if key.ends_with("bias") || shape.len() < 2 {
                Init::Bias
            } else {
                Init::Weight {
                    fan_in: shape[1..].iter().product(),
                }
            };
            (key, shape, init)
        })
        .collect();
    write_seeded(path, &specs, &[], &[], seed, "wan-vae-tiny")
}

/// A tensor to generate: key, shape, distribution.
pub(crate) type Spec = (String, Vec<usize>, Init);

/// Writes a safetensors checkpoint of seeded f32 tensors (plus raw u8 ones),
/// atomically (temp file + rename). Tensors are generated and written one at
/// a time, so writing a 145 MiB expert never holds more than its largest
/// tensor in memory. The safetensors crate can only serialise tensors that
/// are all in memory at once, hence the small header writer here.
pub(crate) fn write_seeded(
    path: &Path,
    specs: &[Spec],
    raw: &[(String, Vec<u8>)],
    extra_meta: &[(&str, String)],
    seed: u64,
    label: &str,
) -> Result<(), String> {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("baton.builtin".into(), label.into());
    meta.insert("baton.version".into(), VERSION.into());
    for (k, v) in extra_meta {
        meta.insert((*k).into(), v.clone().into());
    }
    header.insert("__metadata__".into(), meta.into());
    let mut offset = 0usize;
    let mut entry = |key: &str, dtype: &str, shape: &[usize], bytes: usize| {
        header.insert(
            key.to_string(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes] }),
        );
        offset += bytes;
    };
    for (key, shape, _) in specs {
        entry(key, "F32", shape, shape.iter().product::<usize>() * 4);
    }
    for (key, bytes) in raw {
        entry(key, "U8", &[bytes.len()], bytes.len());
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    // The data section starts 8-byte aligned, padded with spaces as the format allows.
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    crate::media::write_atomically(path, |tmp| {
        let io = |e: std::io::Error| e.to_string();
        let mut w = std::io::BufWriter::new(std::fs::File::create(tmp).map_err(io)?);
        w.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&json).map_err(io)?;
        let mut rng = Normal::new(seed);
        for (_, shape, init) in specs {
            let n: usize = shape.iter().product();
            let (mean, std) = init.mean_std();
            let data: Vec<u8> = (0..n)
                .flat_map(|_| (mean + rng.next() * std).to_le_bytes())
                .collect();
            w.write_all(&data).map_err(io)?;
        }
        for (_, bytes) in raw {
            w.write_all(bytes).map_err(io)?;
        }
        w.flush().map_err(io)
    })
}

pub(crate) enum Init {
    Weight {
        fan_in: usize,
    },
    Bias,
    Norm,
    /// N(0, 1/sqrt(dim)), Wan's modulation tables.
    Modulation {
        dim: usize,
    },
    /// N(0, 1): token embeddings and position-bias tables.
    Embedding,
}

impl Init {
    fn mean_std(&self) -> (f32, f32) {
        match self {
            Init::Weight { fan_in } => (0.0, (1.0 / *fan_in as f32).sqrt()),
            Init::Bias => (0.0, 0.05),
            Init::Norm => (1.0, 0.1),
            Init::Modulation { dim } => (0.0, 1.0 / (*dim as f32).sqrt()),
            Init::Embedding => (0.0, 1.0),
        }
    }
}

/// Every tensor of a Wan DiT of `cfg` in the original layout: (name, shape).
/// The one list of Wan keys: the built-in models, `baton bench load` and the
/// full-size header tests all write from it.
pub fn wan_tensor_shapes(cfg: &WanConfig) -> Vec<(String, Vec<usize>)> {
    wan_tensor_specs(cfg)
        .into_iter()
        .map(|(name, shape, _)| (name, shape))
        .collect()
}

/// Every tensor of a Wan T2V DiT in the original layout, with its shape.
fn wan_tensor_specs(cfg: &WanConfig) -> Vec<(String, Vec<usize>, Init)> {
    let d = cfg.dim;
    let [pt, ph, pw] = cfg.patch_size;
    let mut v = Vec::new();
    let linear = |v: &mut Vec<_>, name: &str, out: usize, inp: usize| {
        v.push((
            format!("{name}.weight"),
            vec![out, inp],
            Init::Weight { fan_in: inp },
        ));
        v.push((format!("{name}.bias"), vec![out], Init::Bias));
    };
    v.push((
        "patch_embedding.weight".into(),
        vec![d, cfg.in_dim, pt, ph, pw],
        Init::Weight {
            fan_in: cfg.in_dim * pt * ph * pw,
        },
    ));
    v.push(("patch_embedding.bias".into(), vec![d], Init::Bias));
    linear(&mut v, "text_embedding.0", d, cfg.text_dim);
    linear(&mut v, "text_embedding.2", d, d);
    linear(&mut v, "time_embedding.0", d, cfg.freq_dim);
    linear(&mut v, "time_embedding.2", d, d);
    linear(&mut v, "time_projection.1", 6 * d, d);
    for i in 0..cfg.num_layers {
        let b = format!("blocks.{i}");
        for attn in ["self_attn", "cross_attn"] {
            for p in ["q", "k", "v", "o"] {
                linear(&mut v, &format!("{b}.{attn}.{p}"), d, d);
            }
            v.push((format!("{b}.{attn}.norm_q.weight"), vec![d], Init::Norm));
            v.push((format!("{b}.{attn}.norm_k.weight"), vec![d], Init::Norm));
        }
        v.push((format!("{b}.norm3.weight"), vec![d], Init::Norm));
        v.push((format!("{b}.norm3.bias"), vec![d], Init::Bias));
        linear(&mut v, &format!("{b}.ffn.0"), cfg.ffn_dim, d);
        linear(&mut v, &format!("{b}.ffn.2"), d, cfg.ffn_dim);
        v.push((
            format!("{b}.modulation"),
            vec![1, 6, d],
            Init::Modulation { dim: d },
        ));
    }
    linear(&mut v, "head.head", cfg.patch_features_out(), d);
    v.push((
        "head.modulation".into(),
        vec![1, 2, d],
        Init::Modulation { dim: d },
    ));
    v
}

/// Fast seeded standard normals (Box-Muller over MT19937); determinism is all
/// that matters here.
struct Normal {
    rng: Mt19937,
    spare: Option<f32>,
}

impl Normal {
    fn new(seed: u64) -> Self {
        Self {
            rng: Mt19937::new(seed),
            spare: None,
        }
    }

    fn next(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let u1 = (self.rng.next_u32() as f64 + 1.0) / 4_294_967_297.0;
        let u2 = self.rng.next_u32() as f64 / 4_294_967_296.0;
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f64::consts::TAU * u2;
        self.spare = Some((r * th.sin()) as f32);
        (r * th.cos()) as f32
    }
}
