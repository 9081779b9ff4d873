//! baton: explicit model lifetimes for two-expert Wan 2.2 pipelines.
//!
//! A Rhai script drives a runtime that loads, samples with and deletes
//! diffusion experts under a memory budget, accounting for every byte.
pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod conditioning;
pub mod dtype;
pub mod ggml;
pub mod host;
pub mod import;
pub mod inspect;
pub mod lora;
pub mod media;
pub mod models;
pub mod plan;
pub mod roots;
pub mod runtime;
pub mod sampling;
pub mod trace_plot;
