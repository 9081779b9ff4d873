//! `baton inspect`: what a checkpoint is, from its header alone.

use crate::checkpoint::{detect, Header};
use crate::runtime::size::{count_label, mib};
use std::fmt::Write;
use std::path::Path;

/// The summary `baton inspect` prints; with `vram`, also where `load_model`
/// would put the weights under that budget (nothing else loaded).
pub fn inspect(path: &Path, heads: Option<usize>, vram: Option<u64>) -> anyhow::Result<String> {
    let header = Header::read(path)?;
    let mut out = String::new();
    writeln!(out, "file:       {}", path.display())?;
    if header.files.len() > 1 {
        let names: Vec<String> = header
            .files
            .iter()
            .filter_map(|f| f.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        writeln!(
            out,
            "shards:     {} files ({})",
            names.len(),
            names.join(", ")
        )?;
    }
    writeln!(
        out,
        "size:       {} ({} tensors, {} params)",
        mib(header.file_len),
        header.tensors.len(),
        count_label(header.param_count())
    )?;
    let dtypes: Vec<String> = header
        .dtype_summary()
        .iter()
        .map(|(d, b)| format!("{d} {}", mib(*b)))
        .collect();
    writeln!(out, "dtypes:     {}", dtypes.join(", "))?;
    if header.tensors.values().any(|e| e.ggml.is_some()) {
        gguf_summary(&mut out, &header)?;
    }
    if crate::runtime::text_encoder::is_text_encoder(&header) {
        text_encoder_summary(&mut out, &header)?;
    } else if crate::runtime::vae::is_vae(&header) {
        vae_summary(&mut out, &header)?;
    } else {
        dit_summary(&mut out, &header, heads, vram)?;
    }
    if !header.metadata.is_empty() {
        let mut keys: Vec<_> = header.metadata.iter().collect();
        keys.sort();
        for (k, v) in keys {
            let v = if v.len() > 60 {
                format!("{}...", &v[..60])
            } else {
                v.clone()
            };
            writeln!(out, "metadata:   {k} = {v}")?;
        }
    }
    Ok(out)
}

/// The Wan DiT part of `inspect`.
fn dit_summary(
    out: &mut String,
    header: &Header,
    heads: Option<usize>,
    vram: Option<u64>,
) -> anyhow::Result<()> {
    match detect(header, heads) {
        Ok(d) => {
            let c = &d.cfg;
            writeln!(out, "arch:       {} {}", d.arch, d.variant)?;
            if d.clip_image {
                writeln!(
                    out,
                    "image:      CLIP image context (img_emb, k_img/v_img): load_model refuses it"
                )?;
            }
            writeln!(out, "layout:     {}", d.layout.name())?;
            if !d.quantized.is_empty() {
                let formats: std::collections::BTreeSet<&str> =
                    d.quantized.values().map(String::as_str).collect();
                let formats: Vec<&str> = formats.into_iter().collect();
                writeln!(
                    out,
                    "quantised:  {} layers {} (as _quantization_metadata / comfy_quant list them)",
                    d.quantized.len(),
                    formats.join(", ")
                )?;
            }
            writeln!(
                out,
                "config:     dim {} | heads {} (head_dim {}) | layers {} | ffn {} | text_dim {} | freq_dim {} | in/out {}/{} | patch {:?}",
                c.dim, c.num_heads, c.head_dim(), c.num_layers, c.ffn_dim, c.text_dim, c.freq_dim, c.in_dim, c.out_dim, c.patch_size
            )?;
            writeln!(
                out,
                "blocks:     {} each, non-block weights {}",
                mib(d.block_bytes(0)),
                mib(d.total_bytes() - (0..c.num_layers).map(|i| d.block_bytes(i)).sum::<u64>())
            )?;
            resident_summary(out, &d, vram)?;
            if !d.unmapped.is_empty() {
                writeln!(
                    out,
                    "unmapped:   {} keys, e.g. {:?}",
                    d.unmapped.len(),
                    &d.unmapped[..d.unmapped.len().min(3)]
                )?;
            }
        }
        Err(e) => writeln!(out, "arch:       not recognised: {e}")?,
    }
    Ok(())
}

/// What `load_model` would keep resident: under `vram` when given (as
/// `load_model` plans it with nothing else loaded), else the whole model.
fn resident_summary(
    out: &mut String,
    d: &crate::checkpoint::Detected,
    vram: Option<u64>,
) -> anyhow::Result<()> {
    let room = crate::runtime::placement::Room::empty(vram.unwrap_or(u64::MAX));
    let policy = crate::runtime::OffloadPolicy::Auto;
    let cpu = candle_core::Device::Cpu;
    let layers = d.cfg.num_layers;
    let kept = d.tensors.values().any(|e| e.kept_as_stored());
    let label = |dtype: candle_core::DType| {
        let l = format!("{dtype:?}").to_lowercase();
        if kept {
            format!("{l}, GGUF matrices kept as stored")
        } else {
            l
        }
    };
    match (
        crate::runtime::placement::plan_dit("model", d, None, policy, true, &cpu, room),
        vram,
    ) {
        (Ok(p), None) => writeln!(
            out,
            "resident:   {} in {} (all {layers} blocks); pass --vram SIZE to plan a partial load",
            mib(p.total),
            label(p.dtype)
        )?,
        (Ok(p), Some(v)) if p.plan.offloaded == 0 => writeln!(
            out,
            "resident:   under --vram {}: all {layers} blocks, {} in {}",
            mib(v),
            mib(p.total),
            label(p.dtype)
        )?,
        (Ok(p), Some(v)) => writeln!(
            out,
            "resident:   under --vram {}: {}/{layers} blocks resident ({} + {} stream buffer), \
             {} streamed per forward, in {}",
            mib(v),
            p.plan.resident_blocks,
            mib(p.total - p.plan.offloaded),
            mib(p.plan.stream_buffer),
            mib(p.plan.offloaded),
            label(p.dtype)
        )?,
        (Err(e), _) => writeln!(out, "resident:   would not load: {e}")?,
    }
    Ok(())
}

/// The umT5 part of `inspect`.
fn text_encoder_summary(out: &mut String, header: &Header) -> anyhow::Result<()> {
    match crate::runtime::text_encoder::plan(header, None) {
        Ok(p) => {
            let c = &p.cfg;
            writeln!(out, "arch:       {} {}", p.info.arch, p.info.variant)?;
            writeln!(
                out,
                "config:     d_model {} | heads {} (d_kv {}) | layers {} | d_ff {} | vocab {} | buckets {}",
                c.d_model, c.num_heads, c.d_kv, c.num_layers, c.d_ff, c.vocab_size, c.num_buckets
            )?;
            let spiece = p.spiece_key.as_deref().unwrap_or("none inside the file");
            writeln!(out, "tokenizer:  {spiece}")?;
        }
        Err(e) => writeln!(out, "arch:       umt5, but: {e}")?,
    }
    Ok(())
}

/// The Wan VAE part of `inspect`.
fn vae_summary(out: &mut String, header: &Header) -> anyhow::Result<()> {
    match crate::runtime::vae::plan(header, None, &candle_core::Device::Cpu) {
        Ok(p) => {
            writeln!(out, "arch:       {} {}", p.info.arch, p.info.variant)?;
            writeln!(out, "layout:     {}", p.info.layout)?;
            match &p.cfg {
                crate::models::wan_vae::VaeKind::V21(c) => writeln!(
                    out,
                    "config:     base dim {} | z_dim {} | dim_mult {:?} | res blocks {}",
                    c.base_dim, c.z_dim, c.dim_mult, c.num_res_blocks
                )?,
                crate::models::wan_vae::VaeKind::V22(c) => writeln!(
                    out,
                    "config:     encoder dim {} | decoder dim {} | z_dim {} (16x spatial, TI2V-5B) | dim_mult {:?} | res blocks {}",
                    c.enc_dim, c.dec_dim, c.z_dim, c.dim_mult, c.num_res_blocks
                )?,
            }
        }
        Err(e) => writeln!(out, "arch:       wan-vae, but: {e}")?,
    }
    Ok(())
}

/// GGUF: tensors and bytes per type, largest first.
fn gguf_summary(out: &mut String, header: &Header) -> anyhow::Result<()> {
    let mut by: std::collections::BTreeMap<&str, (usize, u64)> = Default::default();
    for e in header.tensors.values() {
        let Some(t) = e.ggml else { continue };
        let v = by.entry(crate::checkpoint::gguf::type_name(t)).or_default();
        v.0 += 1;
        v.1 += e.bytes() as u64;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by_key(|(_, (_, b))| std::cmp::Reverse(*b));
    let parts: Vec<String> = v
        .iter()
        .map(|(t, (n, b))| format!("{t} {n} tensors {}", mib(*b)))
        .collect();
    writeln!(out, "gguf:       {}", parts.join(", "))?;
    Ok(())
}
