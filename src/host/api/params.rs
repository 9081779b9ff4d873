//! Recipe parameters: `param(name, default, help)`.
//!
//! Minimal version so imported scripts run on this branch: it returns the
//! default. The `--set` / `--help-recipe` implementation replaces this file.

use rhai::{Dynamic, Engine};

pub fn register(engine: &mut Engine) {
    engine.register_fn("param", |_name: &str, default: Dynamic, _help: &str| {
        default
    });
}
