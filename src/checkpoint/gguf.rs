//! GGUF files (ComfyUI-GGUF's Wan DiTs and llama.cpp-named umT5 encoders):
//! our own reader of the header, over the file, into the same [`Header`] the
//! safetensors path builds.
//!
//! Own reader rather than `candle_core::quantized::gguf_file`: candle 0.11
//! refuses tensors of more than 4 dims (`GGUF_MAX_TENSOR_DIMS`), and every
//! community Wan GGUF carries the 5-D `patch_embedding.weight` (added back by
//! ComfyUI-GGUF's `fix_5d_tensors.py`). The data itself is handed to candle's
//! quantized types ([`GgmlDType`], `QTensor`) unchanged.
//!
//! F32 / F16 / BF16 tensors become ordinary entries (the safetensors dtype);
//! quantized ones are `U8` entries with [`TensorEntry::ggml`] set. Shapes are
//! in torch order (GGUF stores dims reversed).

use super::{CheckpointError, Header, TensorEntry};
pub use crate::ggml::{byte_size, ggml_type, is_quantized, type_name};
use candle_core::quantized::GgmlDType;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// "GGUF" as the first four bytes.
pub const MAGIC: &[u8; 4] = b"GGUF";

/// A metadata value, as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// GGUF's name for the value type (as gguf-py prints it).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "UINT8",
            Value::I8(_) => "INT8",
            Value::U16(_) => "UINT16",
            Value::I16(_) => "INT16",
            Value::U32(_) => "UINT32",
            Value::I32(_) => "INT32",
            Value::F32(_) => "FLOAT32",
            Value::Bool(_) => "BOOL",
            Value::Str(_) => "STRING",
            Value::Array(_) => "ARRAY",
            Value::U64(_) => "UINT64",
            Value::I64(_) => "INT64",
            Value::F64(_) => "FLOAT64",
        }
    }

    /// The value as text (arrays: their length), for `Header::metadata`.
    pub fn text(&self) -> String {
        match self {
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::Str(v) => v.clone(),
            Value::Array(v) => format!("[{} values]", v.len()),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// One tensor's record in the header.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order (fastest dim first).
    pub dims: Vec<u64>,
    pub type_id: u32,
    /// Relative to `data_start`.
    pub offset: u64,
}

/// The parsed header.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the tensor-info section ends (before the alignment padding).
    pub tensor_info_end: u64,
    pub data_start: u64,
}

/// True when the file starts with GGUF's magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut m = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok()
        && &m == MAGIC
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!(
                "header ends early: {n} bytes wanted at byte {} of {} (truncated?)",
                self.pos,
                self.buf.len()
            ));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn len(&mut self, what: &str) -> Result<usize, String> {
        let n = self.u64()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(format!(
                "{what} claims {n} entries/bytes, more than the file holds"
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.len("a string")?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>()?[0]),
            1 => Value::I8(self.arr::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr()?)),
            3 => Value::I16(i16::from_le_bytes(self.arr()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.arr()?)),
            6 => Value::F32(f32::from_le_bytes(self.arr()?)),
            7 => Value::Bool(self.arr::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 if depth < 4 => {
                let inner = self.u32()?;
                let n = self.len("an array")?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

/// Parses the header of a GGUF file held in `buf` (the mapped file).
pub fn parse(buf: &[u8]) -> Result<GgufHeader, String> {
    let mut c = Cursor { buf, pos: 0 };
    if &c.arr::<4>()? != MAGIC {
        return Err("no GGUF magic".into());
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} (baton reads versions 2 and 3)"
        ));
    }
    let n_tensors = c.len("the tensor count")?;
    let n_kv = c.len("the metadata count")?;
    let mut kv = Vec::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = c.string()?;
        let ty = c.u32()?;
        let v = c
            .value(ty, 0)
            .map_err(|e| format!("metadata '{key}': {e}"))?;
        kv.push((key, v));
    }
    let mut tensors = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = c.string()?;
        let n_dims = c.u32()? as usize;
        if n_dims > 8 {
            return Err(format!("tensor '{name}' claims {n_dims} dims"));
        }
        let dims = (0..n_dims)
            .map(|_| c.u64())
            .collect::<Result<Vec<_>, _>>()?;
        let type_id = c.u32()?;
        let offset = c.u64()?;
        tensors.push(TensorInfo {
            name,
            dims,
            type_id,
            offset,
        });
    }
    let alignment = kv
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or(32)
        .max(1);
    let tensor_info_end = c.pos as u64;
    let data_start = tensor_info_end.div_ceil(alignment) * alignment;
    Ok(GgufHeader {
        version,
        kv,
        tensors,
        alignment,
        tensor_info_end,
        data_start,
    })
}

/// Reads a GGUF file's header into a [`Header`]: every tensor's type must be
/// known, its bytes must fit before the next tensor and inside the file.
pub fn read(path: &Path) -> Result<Header, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason: String| CheckpointError::BadGguf {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    // SAFETY: read-only mapping of a file we only read; see source.rs.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let h = parse(&map).map_err(bad)?;
    drop(map);
    let mut tensors = BTreeMap::new();
    let mut ranges = Vec::with_capacity(h.tensors.len());
    for t in &h.tensors {
        let name = &t.name;
        let ty = ggml_type(t.type_id).map_err(|e| bad(format!("tensor '{name}': {e}")))?;
        let numel = t.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let numel =
            numel.ok_or_else(|| bad(format!("tensor '{name}': dims {:?} overflow", t.dims)))?;
        let bytes = byte_size(ty, numel).map_err(|e| bad(format!("tensor '{name}': {e}")))?;
        let start = h.data_start + t.offset;
        let end = start + bytes;
        if end > file_len {
            return Err(bad(format!(
                "tensor '{name}' ({} {:?}) ends at byte {end} but the file has {file_len} \
                 (truncated download?)",
                type_name(ty),
                t.dims
            )));
        }
        ranges.push((start, end, name.clone(), ty));
        let dtype = match ty {
            GgmlDType::F32 => safetensors::Dtype::F32,
            GgmlDType::F16 => safetensors::Dtype::F16,
            GgmlDType::BF16 => safetensors::Dtype::BF16,
            _ => safetensors::Dtype::U8,
        };
        tensors.insert(
            name.clone(),
            TensorEntry {
                dtype,
                shape: t.dims.iter().rev().map(|&d| d as usize).collect(),
                start: start as usize,
                end: end as usize,
                file: 0,
                ggml: Some(ty),
            },
        );
    }
    // A tensor's bytes must not run into the next one: a size that
    // disagrees with the type and shape shows up here.
    ranges.sort_by_key(|r| r.0);
    for w in ranges.windows(2) {
        if w[0].1 > w[1].0 {
            return Err(bad(format!(
                "tensor '{}' ({} x {:?}) needs bytes {}..{}, but '{}' starts at {}: its byte \
                 size disagrees with its type and shape",
                w[0].2,
                type_name(w[0].3),
                tensors[&w[0].2].shape,
                w[0].0,
                w[0].1,
                w[1].2,
                w[1].0
            )));
        }
    }
    let metadata: HashMap<String, String> =
        h.kv.iter().map(|(k, v)| (k.clone(), v.text())).collect();
    Ok(Header {
        path: path.to_path_buf(),
        files: vec![path.to_path_buf()],
        tensors,
        metadata,
        file_len,
    })
}

/// Refuses a GGUF whose `general.architecture` is not one baton runs (a
/// Wan DiT `wan`, or a umT5 encoder `t5encoder` / `t5`), naming it.
pub fn check_architecture(header: &Header) -> Result<(), CheckpointError> {
    if !header.tensors.values().any(|e| e.ggml.is_some()) {
        return Ok(());
    }
    match header
        .metadata
        .get("general.architecture")
        .map(String::as_str)
    {
        None | Some("wan" | "t5encoder" | "t5" | "umt5") => Ok(()),
        Some(other) => Err(CheckpointError::WrongArchitecture {
            path: header.path.clone(),
            reason: format!(
                "its GGUF general.architecture is '{other}'; baton loads Wan DiTs ('wan') \
                 and umT5 text encoders ('t5encoder')"
            ),
        }),
    }
}
