//! Script primitives, one registration file per domain.
pub mod lora;
pub mod media;
pub mod memory;
pub mod models;
pub mod sampling;
pub mod tensors;
pub mod text;
pub mod video;

use crate::runtime::Runtime;
use std::cell::RefCell;
use std::rc::Rc;

/// The runtime as the primitives share it.
pub type Shared = Rc<RefCell<Runtime>>;

/// Registers every primitive on `engine`.
pub fn register_all(engine: &mut rhai::Engine, rt: &Shared) {
    tensors::register(engine, rt);
    models::register(engine, rt);
    lora::register(engine, rt);
    sampling::register(engine, rt);
    memory::register(engine, rt);
    media::register(engine, rt);
    text::register(engine, rt);
    video::register(engine, rt);
}
