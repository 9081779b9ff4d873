//! Writing GGUF files: the Wan layout ComfyUI-GGUF's converter writes
//! (original key names, `general.architecture = "wan"`, dims reversed,
//! data aligned to 32 bytes), for the bench and the memory tests, which need
//! GGUFs larger than the fixtures. Block matrices are quantized with
//! candle's quantizers (`QTensor::quantize`), not llama-quantize: the bytes
//! are valid blocks of the type, not byte-identical to llama.cpp's.

use super::gguf::{type_name, Value};
use super::{CheckpointSource, Header};
pub use crate::ggml::type_id;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};
use std::io::Write;
use std::path::Path;

const ALIGN: usize = 32;

/// One tensor to write: name, GGUF type id, torch-order shape, bytes.
pub struct Tensor<'a> {
    pub name: String,
    pub type_id: u32,
    pub shape: Vec<usize>,
    pub data: std::borrow::Cow<'a, [u8]>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes a GGUF v3 file with string / u32 metadata and `tensors`.
pub fn write(path: &Path, kv: &[(&str, Value)], tensors: &[Tensor]) -> std::io::Result<()> {
    let mut h = Vec::new();
    h.extend_from_slice(super::gguf::MAGIC);
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut h, k);
        match v {
            Value::Str(s) => {
                h.extend_from_slice(&8u32.to_le_bytes());
                put_str(&mut h, s);
            }
            Value::U32(n) => {
                h.extend_from_slice(&4u32.to_le_bytes());
                h.extend_from_slice(&n.to_le_bytes());
            }
            other => {
                return Err(std::io::Error::other(format!(
                    "gguf_write: metadata type {} not written",
                    other.type_name()
                )))
            }
        }
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut h, &t.name);
        h.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            h.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        h.extend_from_slice(&t.type_id.to_le_bytes());
        h.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + t.data.len()).div_ceil(ALIGN) * ALIGN;
    }
    h.resize(h.len().div_ceil(ALIGN) * ALIGN, 0);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&h)?;
    for t in tensors {
        f.write_all(&t.data)?;
        let pad = t.data.len().div_ceil(ALIGN) * ALIGN - t.data.len();
        f.write_all(&vec![0u8; pad])?;
    }
    f.flush()
}

/// Converts a Wan DiT safetensors checkpoint to a GGUF the way the
/// community files are laid out: the blocks' 2-D weights in `ty`, every
/// other tensor in F32 (the 5-D patch embedding included).
pub fn quantize_wan(src: &Path, dst: &Path, ty: GgmlDType) -> anyhow::Result<()> {
    let header = Header::read(src)?;
    let source = CheckpointSource::open(&header, header.tensors.clone())?;
    let mut out = Vec::with_capacity(header.tensors.len());
    for (name, e) in &header.tensors {
        let t = source.tensor(name, DType::F32, &Device::Cpu)?;
        let quantize =
            name.starts_with("blocks.") && e.shape.len() == 2 && e.shape[1] % ty.block_size() == 0;
        let (type_id, data) = if quantize {
            let q = QTensor::quantize(&t, ty)?;
            (type_id(ty), q.data()?.into_owned())
        } else {
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            (0, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        };
        out.push(Tensor {
            name: name.clone(),
            type_id,
            shape: e.shape.clone(),
            data: data.into(),
        });
    }
    let kv = [
        ("general.architecture", Value::Str("wan".into())),
        (
            "general.name",
            Value::Str(format!("baton {}", type_name(ty))),
        ),
    ];
    write(dst, &kv, &out)?;
    Ok(())
}
