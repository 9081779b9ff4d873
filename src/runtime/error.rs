//! The runtime's error type and the two helpers that turn candle's errors
//! into it. Every runtime file uses them, so they live below all of them.

use crate::checkpoint::CheckpointError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Budget(String),
    #[error("{0}")]
    Input(String),
    #[error("{context}: {}", plain_error(.source))]
    Tensor {
        context: String,
        source: candle_core::Error,
    },
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

/// A candle error as one readable message: without the backtrace candle
/// attaches when RUST_BACKTRACE is set, which means nothing to a script author.
pub fn plain_error(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => plain_error(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", plain_error(inner))
        }
        candle_core::Error::WithPath { inner, path } => {
            format!("{}: {}", path.display(), plain_error(inner))
        }
        other => other.to_string(),
    }
}

/// Wraps a candle error with what was being done.
pub fn tensor_err(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Tensor { context, source }
}
