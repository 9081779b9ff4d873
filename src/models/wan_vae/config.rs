//! Wan 2.1 VAE hyper-parameters, the block plan they imply, and recognising a
//! checkpoint from its keys and shapes.
//!
//! The block plan ([`WanVaeConfig::encoder_plan`] / [`WanVaeConfig::decoder_plan`])
//! is the single description of the module tree: the model is built by walking
//! it and [`WanVaeConfig::expected_shapes`] derives every tensor's name and shape
//! from it, so [`infer`] can confirm a guessed config against the whole file
//! instead of trusting a name.

use std::collections::BTreeMap;

use super::layout;

/// Per-channel mean of Wan 2.1 latents (`Wan2_1_VAE` / diffusers `latents_mean`).
pub const LATENTS_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
    -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];

/// Per-channel standard deviation of Wan 2.1 latents (`latents_std`).
pub const LATENTS_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
    1.6382, 1.1253, 2.8251, 1.9160,
];

/// Hyper-parameters of `WanVAE_` (original) / `AutoencoderKLWan` (diffusers),
/// the Wan 2.1 VAE family (also used by Wan 2.2 A14B).
#[derive(Debug, Clone, PartialEq)]
pub struct WanVaeConfig {
    /// Channel width of the first encoder stage (`dim` / `base_dim`): 96 for Wan 2.1.
    pub base_dim: usize,
    /// Latent channels.
    pub z_dim: usize,
    /// Video channels in (3).
    pub in_channels: usize,
    /// Video channels out (3).
    pub out_channels: usize,
    /// Width multiplier per stage; one stage per entry, a resample between stages.
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder stage (the decoder has one more per stage).
    pub num_res_blocks: usize,
    /// Stage scales (1, 1/2, 1/4, ...) that get an attention block after each
    /// residual block; empty for every published Wan VAE.
    pub attn_scales: Vec<f64>,
    /// Per encoder resample: whether it also halves time (`temperal_downsample`).
    /// The decoder uses the reverse.
    pub temporal_downsample: Vec<bool>,
}

/// How a resample changes its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleMode {
    /// Nearest x2 in space, Conv2d C -> C/2.
    Up2d,
    /// [`ResampleMode::Up2d`] after a causal time conv C -> 2C that doubles the frames.
    Up3d,
    /// Zero-pad right/bottom, Conv2d stride 2 (C -> C).
    Down2d,
    /// [`ResampleMode::Down2d`] then a time conv with stride 2 (C -> C).
    Down3d,
}

/// One entry of an encoder `downsamples` / decoder `upsamples` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSpec {
    Res { c_in: usize, c_out: usize },
    Attn { dim: usize },
    Resample { dim: usize, mode: ResampleMode },
}

impl WanVaeConfig {
    /// The Wan 2.1 VAE (`Wan2.1_VAE.pth`, ComfyUI `wan_2.1_vae.safetensors`).
    pub fn wan21() -> Self {
        Self {
            base_dim: 96,
            z_dim: 16,
            in_channels: 3,
            out_channels: 3,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temporal_downsample: vec![false, true, true],
        }
    }

    /// Same structure as [`WanVaeConfig::wan21`] with another base width (the
    /// golden fixtures use 4; benchmarks use small widths).
    pub fn wan21_width(base_dim: usize) -> Self {
        Self {
            base_dim,
            ..Self::wan21()
        }
    }

    /// Checks the values a module tree can be built from.
    pub fn validate(&self) -> Result<(), String> {
        if self.base_dim == 0 || self.z_dim == 0 || self.in_channels == 0 {
            return Err(format!("wan vae config: zero width in {self:?}"));
        }
        if self.dim_mult.len() < 2 || self.dim_mult.contains(&0) {
            return Err(format!(
                "wan vae config: dim_mult {:?} needs at least two non-zero stages",
                self.dim_mult
            ));
        }
        if self.temporal_downsample.len() != self.dim_mult.len() - 1 {
            return Err(format!(
                "wan vae config: {} temporal_downsample flags for {} resamples",
                self.temporal_downsample.len(),
                self.dim_mult.len() - 1
            ));
        }
        if self.num_res_blocks == 0 {
            return Err("wan vae config: num_res_blocks is 0".into());
        }
        // Every upsample halves its channels (Conv2d C -> C/2).
        for d in &self.decoder_dims()[1..self.dim_mult.len()] {
            if d % 2 != 0 {
                return Err(format!(
                    "wan vae config: decoder width {d} is odd, an upsample halves it"
                ));
            }
        }
        Ok(())
    }

    /// Video frames per latent frame after the first: 2^(temporal resamples).
    pub fn temporal_factor(&self) -> usize {
        1 << self.temporal_downsample.iter().filter(|&&t| t).count()
    }

    /// Pixels per latent pixel along H and W: 2^(resamples).
    pub fn spatial_factor(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
    }

    /// Video frames decoded from `latent_frames` frames: 1 + factor * (T - 1).
    pub fn video_frames(&self, latent_frames: usize) -> usize {
        if latent_frames == 0 {
            0
        } else {
            1 + self.temporal_factor() * (latent_frames - 1)
        }
    }

    /// Encoder widths: conv1 output then each stage's output.
    pub fn encoder_dims(&self) -> Vec<usize> {
        std::iter::once(1)
            .chain(self.dim_mult.iter().copied())
            .map(|u| u * self.base_dim)
            .collect()
    }

    /// Decoder widths: conv1 output (the widest) then each stage's output.
    pub fn decoder_dims(&self) -> Vec<usize> {
        let last = *self.dim_mult.last().unwrap_or(&1);
        std::iter::once(last)
            .chain(self.dim_mult.iter().rev().copied())
            .map(|u| u * self.base_dim)
            .collect()
    }

    fn has_attn(&self, scale: f64) -> bool {
        self.attn_scales.contains(&scale)
    }

    /// The encoder's `downsamples` list, in order.
    pub fn encoder_plan(&self) -> Vec<BlockSpec> {
        let dims = self.encoder_dims();
        let stages = self.dim_mult.len();
        let mut plan = Vec::new();
        let mut scale = 1.0;
        for i in 0..stages {
            let (mut c_in, c_out) = (dims[i], dims[i + 1]);
            for _ in 0..self.num_res_blocks {
                plan.push(BlockSpec::Res { c_in, c_out });
                if self.has_attn(scale) {
                    plan.push(BlockSpec::Attn { dim: c_out });
                }
                c_in = c_out;
            }
            if i + 1 != stages {
                let mode = if self.temporal_downsample[i] {
                    ResampleMode::Down3d
                } else {
                    ResampleMode::Down2d
                };
                plan.push(BlockSpec::Resample { dim: c_out, mode });
                scale /= 2.0;
            }
        }
        plan
    }

    /// The decoder's `upsamples` list, in order. Each upsample halves the
    /// channels, so every stage after the first starts at half the previous
    /// stage's width (the reference hard-codes this for stages 1..=3).
    pub fn decoder_plan(&self) -> Vec<BlockSpec> {
        let dims = self.decoder_dims();
        let stages = self.dim_mult.len();
        let mut plan = Vec::new();
        let mut scale = 1.0 / (1u64 << (stages - 2)) as f64;
        for i in 0..stages {
            let c_out = dims[i + 1];
            let mut c_in = if i == 0 { dims[0] } else { dims[i] / 2 };
            for _ in 0..=self.num_res_blocks {
                plan.push(BlockSpec::Res { c_in, c_out });
                if self.has_attn(scale) {
                    plan.push(BlockSpec::Attn { dim: c_out });
                }
                c_in = c_out;
            }
            if i + 1 != stages {
                let mode = if self.temporal_downsample[stages - 2 - i] {
                    ResampleMode::Up3d
                } else {
                    ResampleMode::Up2d
                };
                plan.push(BlockSpec::Resample { dim: c_out, mode });
                scale *= 2.0;
            }
        }
        plan
    }

    /// Every tensor of the checkpoint under its canonical (original Wan) name,
    /// with its shape.
    pub fn expected_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        let mut m = BTreeMap::new();
        let z = self.z_dim;
        conv_shapes(&mut m, "conv1", 2 * z, 2 * z, &[1, 1, 1]);
        conv_shapes(&mut m, "conv2", z, z, &[1, 1, 1]);

        let enc = self.encoder_dims();
        let enc_out = *enc.last().unwrap_or(&0);
        conv_shapes(
            &mut m,
            "encoder.conv1",
            enc[0],
            self.in_channels,
            &[3, 3, 3],
        );
        for (n, b) in self.encoder_plan().iter().enumerate() {
            block_shapes(&mut m, &format!("encoder.downsamples.{n}"), b);
        }
        middle_shapes(&mut m, "encoder.middle", enc_out);
        m.insert("encoder.head.0.gamma".into(), vec![enc_out, 1, 1, 1]);
        conv_shapes(&mut m, "encoder.head.2", 2 * z, enc_out, &[3, 3, 3]);

        let dec = self.decoder_dims();
        let dec_out = *dec.last().unwrap_or(&0);
        conv_shapes(&mut m, "decoder.conv1", dec[0], z, &[3, 3, 3]);
        middle_shapes(&mut m, "decoder.middle", dec[0]);
        for (n, b) in self.decoder_plan().iter().enumerate() {
            block_shapes(&mut m, &format!("decoder.upsamples.{n}"), b);
        }
        m.insert("decoder.head.0.gamma".into(), vec![dec_out, 1, 1, 1]);
        conv_shapes(
            &mut m,
            "decoder.head.2",
            self.out_channels,
            dec_out,
            &[3, 3, 3],
        );
        m
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.expected_shapes()
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum()
    }
}

fn conv_shapes(
    m: &mut BTreeMap<String, Vec<usize>>,
    p: &str,
    c_out: usize,
    c_in: usize,
    k: &[usize],
) {
    let mut w = vec![c_out, c_in];
    w.extend_from_slice(k);
    m.insert(format!("{p}.weight"), w);
    m.insert(format!("{p}.bias"), vec![c_out]);
}

fn middle_shapes(m: &mut BTreeMap<String, Vec<usize>>, p: &str, d: usize) {
    block_shapes(m, &format!("{p}.0"), &BlockSpec::Res { c_in: d, c_out: d });
    block_shapes(m, &format!("{p}.1"), &BlockSpec::Attn { dim: d });
    block_shapes(m, &format!("{p}.2"), &BlockSpec::Res { c_in: d, c_out: d });
}

fn block_shapes(m: &mut BTreeMap<String, Vec<usize>>, p: &str, b: &BlockSpec) {
    match *b {
        BlockSpec::Res { c_in, c_out } => {
            m.insert(format!("{p}.residual.0.gamma"), vec![c_in, 1, 1, 1]);
            conv_shapes(m, &format!("{p}.residual.2"), c_out, c_in, &[3, 3, 3]);
            m.insert(format!("{p}.residual.3.gamma"), vec![c_out, 1, 1, 1]);
            conv_shapes(m, &format!("{p}.residual.6"), c_out, c_out, &[3, 3, 3]);
            if c_in != c_out {
                conv_shapes(m, &format!("{p}.shortcut"), c_out, c_in, &[1, 1, 1]);
            }
        }
        BlockSpec::Attn { dim } => {
            m.insert(format!("{p}.norm.gamma"), vec![dim, 1, 1]);
            conv_shapes(m, &format!("{p}.to_qkv"), 3 * dim, dim, &[1, 1]);
            conv_shapes(m, &format!("{p}.proj"), dim, dim, &[1, 1]);
        }
        BlockSpec::Resample { dim, mode } => {
            let (c_out, time_out) = match mode {
                ResampleMode::Up2d | ResampleMode::Up3d => (dim / 2, 2 * dim),
                ResampleMode::Down2d | ResampleMode::Down3d => (dim, dim),
            };
            conv_shapes(m, &format!("{p}.resample.1"), c_out, dim, &[3, 3]);
            if matches!(mode, ResampleMode::Up3d | ResampleMode::Down3d) {
                conv_shapes(m, &format!("{p}.time_conv"), time_out, dim, &[3, 1, 1]);
            }
        }
    }
}

/// Reads the config back from tensor shapes under canonical (original) names
/// (see [`layout::canonical_names`]), then checks that the config implies
/// exactly these tensors with exactly these shapes.
pub fn infer(shapes: &BTreeMap<String, Vec<usize>>) -> Result<WanVaeConfig, String> {
    let get = |k: &str| -> Result<&Vec<usize>, String> {
        shapes
            .get(k)
            .ok_or_else(|| format!("wan vae: missing tensor `{k}`"))
    };
    let conv_in = get("encoder.conv1.weight")?;
    let [base_dim, in_channels, ..] = conv_in[..] else {
        return Err(format!(
            "wan vae: encoder.conv1.weight has shape {conv_in:?}"
        ));
    };
    let post_quant = get("conv2.weight")?;
    let z_dim = *post_quant
        .first()
        .ok_or("wan vae: conv2.weight has no dims")?;
    let head = get("decoder.head.2.weight")?;
    let out_channels = *head
        .first()
        .ok_or("wan vae: decoder.head.2.weight has no dims")?;
    if base_dim == 0 {
        return Err("wan vae: encoder.conv1.weight has 0 output channels".into());
    }

    // Walk encoder.downsamples.N, splitting stages at resamples.
    let mut stages: Vec<(usize, usize, bool)> = Vec::new(); // (res blocks, width, has attn)
    let mut temporal_downsample = Vec::new();
    let (mut res, mut width, mut attn) = (0usize, base_dim, false);
    for n in 0.. {
        let p = format!("encoder.downsamples.{n}.");
        if !shapes.keys().any(|k| k.starts_with(&p)) {
            break;
        }
        if let Some(w) = shapes.get(&format!("{p}residual.2.weight")) {
            res += 1;
            width = *w.first().unwrap_or(&0);
        } else if shapes.contains_key(&format!("{p}to_qkv.weight")) {
            attn = true;
        } else if shapes.contains_key(&format!("{p}resample.1.weight")) {
            temporal_downsample.push(shapes.contains_key(&format!("{p}time_conv.weight")));
            stages.push((res, width, attn));
            (res, attn) = (0, false);
        } else {
            return Err(format!(
                "wan vae: encoder.downsamples.{n} is neither a residual, attention nor resample block"
            ));
        }
    }
    stages.push((res, width, attn));
    let num_res_blocks = stages[0].0;
    if stages.iter().any(|s| s.0 != num_res_blocks) {
        return Err(format!(
            "wan vae: encoder stages have different residual block counts {:?}",
            stages.iter().map(|s| s.0).collect::<Vec<_>>()
        ));
    }
    let mut dim_mult = Vec::new();
    for &(_, w, _) in &stages {
        if w % base_dim != 0 {
            return Err(format!(
                "wan vae: encoder width {w} is not a multiple of base_dim {base_dim}"
            ));
        }
        dim_mult.push(w / base_dim);
    }
    let attn_scales = stages
        .iter()
        .enumerate()
        .filter(|(_, s)| s.2)
        .map(|(i, _)| 1.0 / (1u64 << i) as f64)
        .collect();
    let cfg = WanVaeConfig {
        base_dim,
        z_dim,
        in_channels,
        out_channels,
        dim_mult,
        num_res_blocks,
        attn_scales,
        temporal_downsample,
    };
    cfg.validate()?;

    let expected = cfg.expected_shapes();
    for (k, s) in &expected {
        match shapes.get(k) {
            None => return Err(format!("wan vae: missing tensor `{k}` (expected {s:?})")),
            Some(got) if got != s => {
                return Err(format!(
                    "wan vae: tensor `{k}` has shape {got:?}, expected {s:?} for {cfg:?}"
                ))
            }
            _ => {}
        }
    }
    if let Some(k) = shapes.keys().find(|k| !expected.contains_key(*k)) {
        return Err(format!("wan vae: unexpected tensor `{k}` for {cfg:?}"));
    }
    Ok(cfg)
}

/// Whether raw file keys (any supported layout, bundling prefixes allowed)
/// look like a Wan 2.1-family VAE. Names only: [`layout::canonical_names`]
/// and [`infer`] confirm, and fail with a message naming the tensor.
/// The original-layout Wan 2.2 TI2V VAE (z_dim 48) nests its decoder blocks
/// one level deeper (`decoder.upsamples.0.upsamples.0.*`) and is not
/// recognised; its diffusers layout may pass here, then fails in
/// `canonical_names` (nested `down_blocks.N.resnets.M` keys).
pub fn is_wan_vae<'a>(keys: impl IntoIterator<Item = &'a str>) -> bool {
    const ORIGINAL: &[&str] = &[
        "encoder.conv1.weight",
        "conv1.weight",
        "conv2.weight",
        "decoder.conv1.weight",
        "decoder.middle.1.to_qkv.weight",
        "decoder.upsamples.0.residual.0.gamma",
        "decoder.head.2.weight",
    ];
    const DIFFUSERS: &[&str] = &[
        "encoder.conv_in.weight",
        "quant_conv.weight",
        "post_quant_conv.weight",
        "decoder.conv_in.weight",
        "decoder.mid_block.attentions.0.to_qkv.weight",
        "decoder.up_blocks.0.resnets.0.norm1.gamma",
        "decoder.conv_out.weight",
    ];
    let stripped: std::collections::BTreeSet<&str> =
        keys.into_iter().map(layout::strip_prefix).collect();
    let all = |set: &[&str]| set.iter().all(|k| stripped.contains(k));
    all(ORIGINAL) || all(DIFFUSERS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan21_plan_matches_the_published_module_tree() {
        let cfg = WanVaeConfig::wan21();
        cfg.validate().unwrap();
        assert_eq!(cfg.encoder_dims(), vec![96, 96, 192, 384, 384]);
        assert_eq!(cfg.decoder_dims(), vec![384, 384, 384, 192, 96]);
        assert_eq!(cfg.encoder_plan().len(), 11);
        let dec = cfg.decoder_plan();
        assert_eq!(dec.len(), 15);
        assert_eq!(
            dec[3],
            BlockSpec::Resample {
                dim: 384,
                mode: ResampleMode::Up3d
            }
        );
        assert_eq!(
            dec[4],
            BlockSpec::Res {
                c_in: 192,
                c_out: 384
            }
        );
        assert_eq!(
            dec[11],
            BlockSpec::Resample {
                dim: 192,
                mode: ResampleMode::Up2d
            }
        );
        assert_eq!(cfg.temporal_factor(), 4);
        assert_eq!(cfg.spatial_factor(), 8);
        assert_eq!(cfg.video_frames(21), 81);
        // 126.9M parameters, the size of Wan2.1_VAE.pth (507 MB in f32).
        assert_eq!(cfg.num_params(), 126_892_531);
        assert_eq!(infer(&cfg.expected_shapes()).unwrap(), cfg);
    }

    #[test]
    fn infer_rejects_a_wrong_shape() {
        let cfg = WanVaeConfig::wan21_width(8);
        let mut shapes = cfg.expected_shapes();
        shapes.insert("decoder.upsamples.4.shortcut.weight".into(), vec![1, 2]);
        let err = infer(&shapes).unwrap_err();
        assert!(err.contains("decoder.upsamples.4.shortcut.weight"), "{err}");
        let mut shapes = cfg.expected_shapes();
        shapes.remove("decoder.head.0.gamma");
        assert!(infer(&shapes).unwrap_err().contains("decoder.head.0.gamma"));
    }
}
