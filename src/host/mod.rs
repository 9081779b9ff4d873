//! The host: a Rhai engine whose primitives call the runtime.
//!
//! Primitives are thin shims: they turn script values into typed options,
//! call the runtime, and turn the result back. No ML logic lives here.
pub mod api;
pub mod catalog;
pub mod docs;
pub mod docs_render;
pub mod engine;
pub mod errors;
pub mod limits;
pub mod manifest;
pub mod options;
pub mod params_text;
pub mod policy;
pub mod recipe;
pub mod repl;
pub mod repl_helper;
pub mod run;
pub mod sampler_docs;
pub mod tables;

pub use engine::{Session, SessionConfig};
