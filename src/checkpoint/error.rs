use std::path::PathBuf;

/// What can be wrong with a checkpoint file. Every variant names the file and,
/// where there is one, the key, so the user can tell which download is bad.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot open checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file (truncated or corrupt?): {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: invalid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    #[error("{path} is not a safetensors file: it is {format}")]
    WrongFormat { path: PathBuf, format: String },
    #[error("{path}: not a Wan DiT checkpoint: {reason}")]
    WrongArchitecture { path: PathBuf, reason: String },
    #[error("{index}: shard '{shard}' is missing (it should hold '{key}' and {} more tensors)", count - 1)]
    MissingShard {
        index: PathBuf,
        shard: String,
        key: String,
        count: usize,
    },
    #[error("{path}: missing tensor '{key}'")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: tensor '{key}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor '{key}' has dtype {dtype}, which baton cannot load yet{hint}")]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
        hint: String,
    },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
}
