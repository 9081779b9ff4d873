//! Model primitives: load_model, prefetch_model, delete_model, offload_model,
//! loaded_models, predict.

use super::{Shared, SharedPolicy};
use crate::host::errors::{call_site, script_err, tensor_err, ScriptResult};
use crate::host::options::Opts;
use crate::host::policy::PathPolicy;
use crate::runtime::registry::LoadedModel;
use crate::runtime::{Entry, LoadOptions, OffloadPolicy};
use candle_core::{DType, Tensor};
use rhai::{Dynamic, Engine, Map, NativeCallContext};

use super::ModelHandle;

/// A model path through the file policy; `builtin:` names live in baton's
/// own cache and are exempt.
pub(super) fn model_path(policy: &PathPolicy, what: &str, path: &str) -> ScriptResult<String> {
    if path.starts_with("builtin:") {
        return Ok(path.to_string());
    }
    let p = policy.read(what, path).map_err(script_err)?;
    Ok(p.to_string_lossy().into_owned())
}

fn load_options(map: Map, policy: &PathPolicy) -> ScriptResult<LoadOptions> {
    let o = Opts::documented("load_model", map)?;
    let offload = match o.string("offload", "auto")?.as_str() {
        "auto" => OffloadPolicy::Auto,
        "never" => OffloadPolicy::Never,
        other => {
            return Err(script_err(format!(
                "load_model: offload must be \"auto\" or \"never\", got \"{other}\""
            )))
        }
    };
    let dtype = match o.opt_string("dtype")?.as_deref() {
        None | Some("auto") => None,
        // fp8 / fp8_scaled DiT weights stay 1 byte, dequantised per layer.
        Some("fp8") => Some(DType::F8E4M3),
        Some(s) => Some(parse_dtype(s)?),
    };
    Ok(LoadOptions {
        name: o.opt_string("name")?,
        offload,
        dtype,
        heads: o.opt_usize("heads")?,
        tokenizer: match o.opt_string("tokenizer")? {
            Some(t) => Some(model_path(policy, "load_model: tokenizer", &t)?.into()),
            None => None,
        },
        check_weights: o.bool("check_weights", false)?,
        prefetch: o.bool("prefetch", true)?,
        requested: None,
    })
}

pub fn parse_dtype(s: &str) -> ScriptResult<DType> {
    crate::dtype::parse_compute(s).map_err(script_err)
}

pub fn register(engine: &mut Engine, rt: &Shared, policy: &SharedPolicy) {
    engine.register_type_with_name::<ModelHandle>("Model");

    let r = rt.clone();
    let pol = policy.clone();
    let load = move |ctx: NativeCallContext, path: &str, map: Map| -> ScriptResult<ModelHandle> {
        let requested = path;
        let (path, opts) = {
            let pol = pol.borrow();
            (
                model_path(&pol, "load_model", path)?,
                load_options(map, &pol)?,
            )
        };
        let opts = LoadOptions {
            requested: Some(requested.to_string()),
            ..opts
        };
        let at = call_site(&ctx);
        let mut rt = r.borrow_mut();
        let id = rt.load_model(&path, &opts, &at).map_err(script_err)?;
        let name = rt.model(id).map_err(script_err)?.name.clone();
        Ok(ModelHandle { id, name })
    };
    let load2 = load.clone();
    engine.register_fn("load_model", load);
    engine.register_fn("load_model", move |ctx: NativeCallContext, path: &str| {
        load2(ctx, path, Map::new())
    });

    let r = rt.clone();
    engine.register_fn(
        "delete_model",
        move |ctx: NativeCallContext, m: ModelHandle| -> ScriptResult<()> {
            let at = call_site(&ctx);
            r.borrow_mut().delete_model(m.id, &at).map_err(script_err)
        },
    );

    let r = rt.clone();
    engine.register_fn(
        "offload_model",
        move |ctx: NativeCallContext, m: ModelHandle| -> ScriptResult<()> {
            let at = call_site(&ctx);
            r.borrow_mut().offload_model(m.id, &at).map_err(script_err)
        },
    );

    let r = rt.clone();
    let pol = policy.clone();
    engine.register_fn(
        "prefetch_model",
        move |ctx: NativeCallContext, path: &str| -> ScriptResult<()> {
            let path = model_path(&pol.borrow(), "prefetch_model", path)?;
            let at = call_site(&ctx);
            r.borrow_mut()
                .prefetch_model(&path, &at)
                .map(|_| ())
                .map_err(script_err)
        },
    );

    let r = rt.clone();
    engine.register_fn("models", move || -> Map {
        available_report(r.borrow().model_roots.dirs())
    });

    let r = rt.clone();
    engine.register_fn("loaded_models", move || -> rhai::Array {
        r.borrow()
            .models()
            .map(|m| {
                Dynamic::from(ModelHandle {
                    id: m.id,
                    name: m.name.clone(),
                })
            })
            .collect()
    });

    let r = rt.clone();
    let predict = move |call: NativeCallContext,
                        m: ModelHandle,
                        x: Tensor,
                        t: Dynamic,
                        ctx: Tensor,
                        map: Map|
          -> ScriptResult<Tensor> {
        let o = Opts::documented("predict", map)?;
        let image_cond = o.opt_tensor("image_cond")?;
        let t = timestep_tensor(&t, &x)?;
        if let Some(f) = super::scripted::function_of(&r, m.id) {
            return super::scripted::predict(&call, &r, &m, &f, &x, &t, &ctx);
        }
        let at = call_site(&call);
        r.borrow_mut()
            .predict_at(m.id, &x, &t, &ctx, image_cond.as_ref(), &at)
            .map_err(script_err)
    };
    let p = predict.clone();
    engine.register_fn(
        "predict",
        move |call: NativeCallContext, m: ModelHandle, x: Tensor, t: Dynamic, ctx: Tensor| {
            p(call, m, x, t, ctx, Map::new())
        },
    );
    engine.register_fn("predict", predict);

    register_getters(engine, rt);
    engine.register_fn("to_string", |m: &mut ModelHandle| {
        format!("Model({})", m.name)
    });
    engine.register_fn("to_debug", |m: &mut ModelHandle| {
        format!("Model({}#{})", m.name, m.id)
    });
}

/// A timestep given as a number or a tensor, as a [B] f32 tensor.
fn timestep_tensor(t: &Dynamic, x: &Tensor) -> ScriptResult<Tensor> {
    if let Some(t) = t.clone().try_cast::<Tensor>() {
        return Ok(t);
    }
    let v = crate::host::options::as_f64(t).ok_or_else(|| {
        script_err(format!(
            "predict: timestep must be a number or a tensor, got {}",
            t.type_name()
        ))
    })?;
    Tensor::new(&[v as f32], x.device()).map_err(tensor_err)
}

fn register_getters(engine: &mut Engine, rt: &Shared) {
    engine.register_get("name", |m: &mut ModelHandle| m.name.clone());
    let r = rt.clone();
    engine.register_get("deleted", move |m: &mut ModelHandle| {
        r.borrow().is_deleted(m.id)
    });
    model_getter(engine, rt, "arch", |m, _| {
        format!("{} {}", m.info.arch, m.info.variant)
    });
    model_getter(engine, rt, "dtype", |m, _| {
        crate::dtype::label(m.info.dtype).to_string()
    });
    model_getter(engine, rt, "bytes", |_, e| e.total() as i64);
    model_getter(engine, rt, "resident_bytes", |_, e| e.resident() as i64);
    model_getter(engine, rt, "offloaded_bytes", |_, e| e.offloaded as i64);
}

/// A getter on a live model (and its ledger entry); deleted models fail
/// with the line where they were deleted.
fn model_getter<T: Clone + Send + Sync + 'static>(
    engine: &mut Engine,
    rt: &Shared,
    name: &str,
    f: fn(&LoadedModel, &Entry) -> T,
) {
    let r = rt.clone();
    engine.register_get(name, move |m: &mut ModelHandle| -> ScriptResult<T> {
        let rt = r.borrow();
        let lm = rt.model(m.id).map_err(script_err)?;
        let entry = rt.ledger().get(m.id).cloned().unwrap_or_default();
        Ok(f(lm, &entry))
    });
}

/// `models()`: the files under the model roots, as a map that prints as a
/// table (`kind: "models"`) with the list under `files`.
pub fn available_report(roots: &[std::path::PathBuf]) -> Map {
    let files: rhai::Array = crate::host::catalog::list(roots)
        .into_iter()
        .map(|a| {
            let mut m = Map::new();
            m.insert("name".into(), a.name.into());
            m.insert("path".into(), a.path.display().to_string().into());
            m.insert("folder".into(), a.folder.into());
            m.insert("bytes".into(), Dynamic::from(a.bytes as i64));
            m.insert("arch".into(), a.arch.into());
            Dynamic::from_map(m)
        })
        .collect();
    let mut m = Map::new();
    m.insert("kind".into(), "models".into());
    m.insert("files".into(), Dynamic::from_array(files));
    m
}
