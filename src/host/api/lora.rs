//! LoRA primitives: apply_lora(model, path[, strength]), remove_lora(model, path).

use super::models::model_path;
use super::ModelHandle;
use super::{Shared, SharedPolicy};
use crate::host::errors::{call_site, script_err, ScriptResult};
use crate::host::options::as_f64;
use rhai::{Dynamic, Engine, NativeCallContext};

pub fn register(engine: &mut Engine, rt: &Shared, policy: &SharedPolicy) {
    let r = rt.clone();
    let pol = policy.clone();
    let apply = move |ctx: NativeCallContext,
                      m: ModelHandle,
                      path: &str,
                      strength: Dynamic|
          -> ScriptResult<ModelHandle> {
        // The LoRA file is read like a model file: only under the allowed roots.
        let path = model_path(&pol.borrow(), "apply_lora", path)?;
        let s = as_f64(&strength).ok_or_else(|| {
            script_err(format!(
                "apply_lora: strength must be a number, got {}",
                strength.type_name()
            ))
        })?;
        let at = call_site(&ctx);
        r.borrow_mut()
            .apply_lora_at(m.id, &path, s, &at)
            .map_err(script_err)?;
        Ok(m)
    };
    let apply1 = apply.clone();
    engine.register_fn("apply_lora", apply);
    engine.register_fn(
        "apply_lora",
        move |ctx: NativeCallContext, m: ModelHandle, path: &str| -> ScriptResult<ModelHandle> {
            apply1(ctx, m, path, Dynamic::from(1.0 as rhai::FLOAT))
        },
    );

    let r = rt.clone();
    engine.register_fn(
        "remove_lora",
        move |ctx: NativeCallContext, m: ModelHandle, path: &str| -> ScriptResult<ModelHandle> {
            let at = call_site(&ctx);
            r.borrow_mut()
                .remove_lora_at(m.id, path, &at)
                .map_err(script_err)?;
            Ok(m)
        },
    );
}
