//! `baton inspect`: what a checkpoint is, from its header alone.

use crate::checkpoint::{detect, Header};
use crate::runtime::size::{count_label, mib};
use std::fmt::Write;
use std::path::Path;

pub fn inspect(path: &Path, heads: Option<usize>) -> anyhow::Result<String> {
    let header = Header::read(path)?;
    let mut out = String::new();
    writeln!(out, "file:       {}", path.display())?;
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
    match detect(&header, heads) {
        Ok(d) => {
            let c = &d.cfg;
            writeln!(out, "arch:       {} {}", d.arch, d.variant)?;
            writeln!(out, "layout:     {}", d.layout.name())?;
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
