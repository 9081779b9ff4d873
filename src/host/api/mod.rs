//! Script primitives, one registration file per domain.
pub mod conditioning;
pub mod lora;
pub mod media;
pub mod memory;
pub mod models;
pub mod params;
pub mod sampling;
pub mod scripted;
pub mod tensors;
pub mod text;
pub mod video;

use super::policy::PathPolicy;
use crate::runtime::Runtime;
use std::cell::RefCell;
use std::rc::Rc;

/// A script's handle on a model: an id, never the weights. Here rather
/// than in `models.rs`, which registers it, because every domain's
/// primitives take it (`scripted.rs` among them, whose functions
/// `models.rs` calls in turn).
#[derive(Debug, Clone)]
pub struct ModelHandle {
    pub id: crate::runtime::ModelId,
    pub name: String,
}

/// The runtime as the primitives share it.
pub type Shared = Rc<RefCell<Runtime>>;

/// The file access policy as the primitives share it (the session adds the
/// script's directory when it runs a file).
pub type SharedPolicy = Rc<RefCell<PathPolicy>>;

/// Registers every primitive on `engine`.
pub fn register_all(engine: &mut rhai::Engine, rt: &Shared, policy: &SharedPolicy) {
    tensors::register(engine, rt, policy);
    models::register(engine, rt, policy);
    lora::register(engine, rt, policy);
    sampling::register(engine, rt);
    scripted::register(engine, rt);
    memory::register(engine, rt);
    media::register(engine, policy);
    text::register(engine, rt);
    video::register(engine, rt);
    conditioning::register(engine, rt);
}
