//! `baton batch`: many videos, one process per GPU.
//!
//! A jobs file (JSON Lines or CSV of recipe parameters, [`jobs`]) is split
//! into shards ([`shard`]: `--shard I/N`, a Slurm job array or a Kubernetes
//! Indexed Job); each process runs its shard ([`runner`]) into
//! `DIR/<id>/` item directories that appear whole or not at all, under a
//! lock per item ([`items`]). A recipe that defines `fn batch(items)` is
//! run stage-major: each model loads once per group of items. `baton batch
//! status DIR` sums it up ([`status`]).

pub mod items;
pub mod jobs;
pub mod runner;
pub mod shard;
pub mod status;

pub use runner::{Options, Summary};
pub use shard::Shard;
