//! The host: a Rhai engine whose primitives call the runtime.
//!
//! Primitives are thin shims: they turn script values into typed options,
//! call the runtime, and turn the result back. No ML logic lives here.
pub mod api;
pub mod engine;
pub mod errors;
pub mod limits;
pub mod options;
pub mod policy;
pub mod repl;
pub mod tables;

pub use engine::{Session, SessionConfig};
