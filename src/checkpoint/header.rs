//! The safetensors header: tensor names, dtypes, shapes and byte ranges.
//!
//! Parsing the header never touches tensor data, so `baton inspect` and
//! planning are cheap even for 28 GB files.

use super::CheckpointError;
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// One tensor's entry; `start..end` are absolute byte offsets in the file
/// `Header::files[file]` (always 0 for a single-file checkpoint).
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
    pub file: usize,
    /// The GGML type of a GGUF tensor (`None` for safetensors); a
    /// block-quantized one has `dtype` U8 and is kept as its blocks.
    pub ggml: Option<candle_core::quantized::GgmlDType>,
}

impl TensorEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> usize {
        self.end - self.start
    }
    /// A GGUF matrix a DiT keeps as stored: quantized blocks, or a 2-D
    /// F16/BF16 weight (widened per call, like a bf16 safetensors weight).
    /// Its bytes in memory are its bytes in the file.
    pub fn kept_as_stored(&self) -> bool {
        use candle_core::quantized::GgmlDType as G;
        match self.ggml {
            Some(G::F16 | G::BF16) => self.shape.len() == 2,
            Some(G::F32) | None => false,
            Some(_) => true,
        }
    }
    /// A GGUF tensor held as quantized blocks (Q8_0, Q4_K, ...).
    pub fn quantized(&self) -> Option<candle_core::quantized::GgmlDType> {
        self.ggml.filter(|&t| super::gguf::is_quantized(t))
    }
}

/// A checkpoint's tensors: one safetensors file, or a sharded set read as
/// one (see [`super::shards`]).
#[derive(Debug, Clone)]
pub struct Header {
    /// What the user named: the file, the index json or the folder.
    pub path: PathBuf,
    /// The safetensors files holding the data; `TensorEntry::file` indexes it.
    pub files: Vec<PathBuf>,
    pub tensors: BTreeMap<String, TensorEntry>,
    pub metadata: HashMap<String, String>,
    /// Bytes of all the files together.
    pub file_len: u64,
}

/// Largest header we accept; real ones are a few MB at most.
const MAX_HEADER: u64 = 100 << 20;

impl Header {
    /// Reads a checkpoint's header: a `.safetensors` file, or a sharded set
    /// named by its `*.safetensors.index.json` or by its folder.
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        if path.is_dir() || super::shards::is_index(path) {
            return super::shards::read(path);
        }
        if super::gguf::is_gguf(path) {
            return super::gguf::read(path);
        }
        Self::read_file(path)
    }

    /// Reads and validates one file's header: every byte range must lie inside
    /// the file and the ranges must exactly tile the data section.
    pub fn read_file(path: &Path) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        if file_len < 8 {
            return Err(corrupt(format!("file is only {file_len} bytes")));
        }
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes).map_err(io)?;
        if let Some(format) = super::sniff::other_format(&len_bytes) {
            return Err(CheckpointError::WrongFormat {
                path: path.to_path_buf(),
                format: format.to_string(),
            });
        }
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER || 8 + header_len > file_len {
            return Err(corrupt(format!(
                "header claims {header_len} bytes but the file has {file_len}"
            )));
        }
        let mut json = vec![0u8; header_len as usize];
        file.read_exact(&mut json).map_err(io)?;
        let value: serde_json::Value =
            serde_json::from_slice(&json).map_err(|e| corrupt(format!("header json: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| corrupt("header is not a json object".into()))?;
        let data_start = 8 + header_len as usize;
        let mut tensors = BTreeMap::new();
        let mut metadata = HashMap::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                if let Some(m) = v.as_object() {
                    for (k, v) in m {
                        if let Some(s) = v.as_str() {
                            metadata.insert(k.clone(), s.to_string());
                        }
                    }
                }
                continue;
            }
            let info: safetensors::tensor::TensorInfo = serde_json::from_value(v.clone())
                .map_err(|e| corrupt(format!("tensor '{name}': {e}")))?;
            let (s, e) = info.data_offsets;
            let want = info
                .shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .and_then(|n| n.checked_mul(info.dtype.bitsize()))
                .map(|bits| bits / 8);
            if e < s || want != Some(e - s) {
                return Err(corrupt(format!(
                    "tensor '{name}': byte range {s}..{e} does not hold {:?} x {:?}",
                    info.shape, info.dtype
                )));
            }
            let end = data_start.checked_add(e).map_or(u64::MAX, |v| v as u64);
            if end > file_len {
                return Err(corrupt(format!(
                    "tensor '{name}' ends at byte {end} but the file has {file_len} (truncated download?)"
                )));
            }
            tensors.insert(
                name.clone(),
                TensorEntry {
                    dtype: info.dtype,
                    shape: info.shape,
                    start: data_start + s,
                    end: data_start + e,
                    file: 0,
                    ggml: None,
                },
            );
        }
        let mut ranges: Vec<(usize, usize, &String)> =
            tensors.iter().map(|(k, e)| (e.start, e.end, k)).collect();
        ranges.sort();
        let mut expect = data_start;
        for (s, e, k) in ranges {
            if s != expect {
                return Err(corrupt(format!(
                    "tensor '{k}' starts at byte {s}, expected {expect}: byte ranges overlap or leave gaps"
                )));
            }
            expect = e;
        }
        Ok(Self {
            path: path.to_path_buf(),
            files: vec![path.to_path_buf()],
            tensors,
            metadata,
            file_len,
        })
    }

    /// The folder where files that describe the checkpoint live
    /// (`config.json`): the folder itself for a sharded folder, else the
    /// folder holding the file or index.
    pub fn dir(&self) -> Option<&Path> {
        if self.path.is_dir() {
            Some(&self.path)
        } else {
            self.path.parent()
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.bytes() as u64).sum()
    }

    pub fn param_count(&self) -> u64 {
        self.tensors.values().map(|t| t.numel() as u64).sum()
    }

    /// Distinct dtypes and their byte totals, largest first.
    pub fn dtype_summary(&self) -> Vec<(String, u64)> {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for t in self.tensors.values() {
            let name = match t.ggml {
                Some(g) => super::gguf::type_name(g).to_string(),
                None => format!("{:?}", t.dtype),
            };
            *m.entry(name).or_default() += t.bytes() as u64;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }
}
