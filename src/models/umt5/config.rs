//! The umT5 encoder hyper-parameters.
//!
//! Like the DiT's, they are read back from tensor shapes when a checkpoint is
//! opened ([`UmT5Config::infer`]), so a text encoder is never guessed from its
//! file name. Two values are invisible in shapes: the bucket `max_distance`
//! (128 in every published T5 / umT5) and the norm epsilon (1e-6).

use std::collections::HashMap;

/// Hyper-parameters of a umT5 encoder (`UMT5EncoderModel` / Wan's `T5Encoder`).
#[derive(Debug, Clone, PartialEq)]
pub struct UmT5Config {
    /// Rows of the token embedding (`shared.weight`).
    pub vocab_size: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Size of one attention head; the inner attention dim is `num_heads * d_kv`.
    pub d_kv: usize,
    pub num_heads: usize,
    /// Inner size of the gated-GELU feed-forward network.
    pub d_ff: usize,
    pub num_layers: usize,
    /// Relative-position buckets (half for each direction).
    pub num_buckets: usize,
    /// Distances at and beyond this share the last bucket of their direction.
    pub max_distance: usize,
    /// Epsilon of the T5 RMS layer norms.
    pub eps: f64,
}

impl UmT5Config {
    /// Inner attention dim, `num_heads * d_kv`.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// umT5-XXL (`google/umt5-xxl`), the text encoder of every Wan 2.x model.
    pub fn xxl() -> Self {
        Self {
            vocab_size: 256384,
            d_model: 4096,
            d_kv: 64,
            num_heads: 64,
            d_ff: 10240,
            num_layers: 24,
            num_buckets: 32,
            max_distance: 128,
            eps: 1e-6,
        }
    }

    /// The tiny model of the golden fixtures (`tests/fixtures/umt5_tiny/config.json`).
    pub fn fixture_tiny() -> Self {
        Self {
            vocab_size: 512,
            d_model: 32,
            d_kv: 8,
            num_heads: 4,
            d_ff: 64,
            num_layers: 2,
            num_buckets: 32,
            max_distance: 128,
            eps: 1e-6,
        }
    }

    /// Reads the config back from tensor shapes under canonical names (see
    /// [`super::layout`]). The head count comes from the relative bias table
    /// `[num_buckets, num_heads]`, `d_kv` from the q projection, the layer count
    /// from the highest block index; every block must be complete, so a file
    /// cut short is reported here rather than as a missing key mid-load.
    ///
    /// `shapes` yields (canonical name, shape) pairs, e.g.
    /// `tensors.iter().map(|(k, e)| (k.as_str(), e.shape.as_slice()))`.
    pub fn infer<'a>(
        shapes: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Result<UmT5Config, String> {
        let shapes: HashMap<&str, &[usize]> = shapes.into_iter().collect();
        let get = |key: &str, rank: usize| -> Result<&[usize], String> {
            let s = *shapes
                .get(key)
                .ok_or_else(|| format!("umt5: missing tensor '{key}'"))?;
            if s.len() != rank || s.contains(&0) {
                return Err(format!(
                    "umt5: tensor '{key}' has shape {s:?}, expected {rank} non-zero dims"
                ));
            }
            Ok(s)
        };
        let emb = get("shared.weight", 2)?;
        let (vocab_size, d_model) = (emb[0], emb[1]);
        let num_layers = shapes
            .keys()
            .filter_map(|k| {
                k.strip_prefix("encoder.block.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1);
        if num_layers == 0 {
            return Err("umt5: no encoder blocks ('encoder.block.N.*') found".into());
        }
        let bias = get(&bias_key(0), 2)?;
        let (num_buckets, num_heads) = (bias[0], bias[1]);
        let inner = get(&attn_key(0, "q"), 2)?[0];
        if !inner.is_multiple_of(num_heads) {
            return Err(format!(
                "umt5: attention inner dim {inner} is not a multiple of {num_heads} heads"
            ));
        }
        let d_ff = get(&ffn_key(0, "wi_0"), 2)?[0];
        let cfg = UmT5Config {
            vocab_size,
            d_model,
            d_kv: inner / num_heads,
            num_heads,
            d_ff,
            num_layers,
            num_buckets,
            max_distance: 128,
            eps: 1e-6,
        };
        if num_buckets < 4 || !num_buckets.is_multiple_of(2) {
            return Err(format!(
                "umt5: {num_buckets} relative-position buckets (need an even number >= 4)"
            ));
        }
        for (key, want) in cfg.expected_shapes() {
            match shapes.get(key.as_str()) {
                Some(s) if **s == want[..] => {}
                Some(s) => {
                    return Err(format!(
                        "umt5: tensor '{key}' has shape {s:?}, expected {want:?} for {cfg:?}"
                    ))
                }
                None => return Err(format!("umt5: missing tensor '{key}'")),
            }
        }
        Ok(cfg)
    }

    /// Every tensor the encoder reads, canonical name and shape.
    pub fn expected_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, inner, ff) = (self.d_model, self.inner_dim(), self.d_ff);
        let mut out = vec![
            ("shared.weight".to_string(), vec![self.vocab_size, d]),
            ("encoder.final_layer_norm.weight".to_string(), vec![d]),
        ];
        for i in 0..self.num_layers {
            out.push((
                format!("encoder.block.{i}.layer.0.layer_norm.weight"),
                vec![d],
            ));
            for p in ["q", "k", "v"] {
                out.push((attn_key(i, p), vec![inner, d]));
            }
            out.push((attn_key(i, "o"), vec![d, inner]));
            out.push((bias_key(i), vec![self.num_buckets, self.num_heads]));
            out.push((
                format!("encoder.block.{i}.layer.1.layer_norm.weight"),
                vec![d],
            ));
            out.push((ffn_key(i, "wi_0"), vec![ff, d]));
            out.push((ffn_key(i, "wi_1"), vec![ff, d]));
            out.push((ffn_key(i, "wo"), vec![d, ff]));
        }
        out
    }
}

fn attn_key(block: usize, proj: &str) -> String {
    format!("encoder.block.{block}.layer.0.SelfAttention.{proj}.weight")
}

fn bias_key(block: usize) -> String {
    format!("encoder.block.{block}.layer.0.SelfAttention.relative_attention_bias.weight")
}

fn ffn_key(block: usize, proj: &str) -> String {
    format!("encoder.block.{block}.layer.1.DenseReluDense.{proj}.weight")
}
