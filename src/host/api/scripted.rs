//! `model_from_fn`: a model whose prediction is a script function
//! `|x, sigma, context|` returning the flow velocity, as a Wan DiT does.
//! `sample` (splits and `sampler_state` included) and `predict` take it like
//! any model: the REPL's way to try samplers, schedules and guidance on a
//! toy field in milliseconds.
//!
//! The runtime registers it at 0 bytes and holds the function as an opaque
//! value; only the engine can call a function pointer, so the pass runs
//! here, over a [`Denoiser`] that calls the function through the primitive's
//! `NativeCallContext`, with the runtime not borrowed (the function may call
//! any primitive).

use super::ModelHandle;
use super::Shared;
use crate::host::errors::{call_site, script_err, tensor_err, ScriptResult};
use crate::host::options::Opts;
use crate::runtime::cancel;
use crate::runtime::scripted::run_external_pass;
use crate::runtime::{ModelId, SampleOptions};
use crate::sampling::ksampler::{all_finite, Call, Cond, Denoiser};
use candle_core::{DType, Tensor};
use rhai::{Dynamic, Engine, EvalAltResult, FnPtr, Map, NativeCallContext};

pub fn register(engine: &mut Engine, rt: &Shared) {
    let r = rt.clone();
    let make = move |ctx: NativeCallContext, f: FnPtr, map: Map| -> ScriptResult<ModelHandle> {
        let o = Opts::documented("model_from_fn", map)?;
        let name = o.opt_string("name")?;
        let at = call_site(&ctx);
        let mut rt = r.borrow_mut();
        if let Some(n) = &name {
            if rt.models().any(|m| &m.name == n) {
                return Err(script_err(format!(
                    "model_from_fn: a model named '{n}' is already loaded"
                )));
            }
        }
        let id = rt.add_scripted_model(name, Box::new(f), &at);
        let name = rt.model(id).map_err(script_err)?.name.clone();
        Ok(ModelHandle { id, name })
    };
    let make2 = make.clone();
    engine.register_fn("model_from_fn", make);
    engine.register_fn("model_from_fn", move |ctx: NativeCallContext, f: FnPtr| {
        make2(ctx, f, Map::new())
    });
}

/// The function of a `model_from_fn` model; `None` for any other model
/// (and for a deleted one, whose error the ordinary path gives).
pub fn function_of(rt: &Shared, id: ModelId) -> Option<FnPtr> {
    let rt = rt.borrow();
    let m = rt.model(id).ok()?;
    m.scripted()?.downcast_ref::<FnPtr>().cloned()
}

/// The script function as the sampling pass's denoiser. A script error is
/// kept whole (with its position) and handed back after the pass.
struct ScriptDenoiser<'a, 'b> {
    ctx: &'a NativeCallContext<'b>,
    f: &'a FnPtr,
    name: &'a str,
    positive: &'a Tensor,
    negative: Option<&'a Tensor>,
    error: Option<Box<EvalAltResult>>,
}

impl Denoiser for ScriptDenoiser<'_, '_> {
    fn velocity(&mut self, x: &Tensor, call: &Call) -> candle_core::Result<Tensor> {
        let context = match call.cond {
            Cond::Positive => {
                cancel::check_candle(|| {
                    format!("before step {} of {}", call.step + 1, call.steps)
                })?;
                self.positive
            }
            Cond::Negative => self
                .negative
                .ok_or_else(|| candle_core::Error::Msg("no negative context".into()))?,
        };
        let what = format!(
            "step {} of {} (sigma {})",
            call.step + 1,
            call.steps,
            call.sigma
        );
        match call_fn(
            self.ctx,
            self.f,
            self.name,
            x,
            call.sigma as f64,
            context,
            &what,
        ) {
            Ok(v) => Ok(v),
            Err(e) => {
                let msg = e.to_string();
                self.error = Some(e);
                Err(candle_core::Error::Msg(msg))
            }
        }
    }
}

/// Calls `f(x, sigma, context)` and checks that it returned a finite tensor
/// shaped like `x` (as f32).
fn call_fn(
    ctx: &NativeCallContext,
    f: &FnPtr,
    name: &str,
    x: &Tensor,
    sigma: f64,
    context: &Tensor,
    what: &str,
) -> ScriptResult<Tensor> {
    let out: Dynamic = f
        .call_within_context(ctx, (x.clone(), sigma, context.clone()))
        .map_err(|e| match *e {
            // The function exists but not with three parameters.
            EvalAltResult::ErrorFunctionNotFound(ref sig, pos)
                if sig.starts_with(&format!("{} (", f.fn_name())) =>
            {
                EvalAltResult::ErrorRuntime(
                    format!(
                        "model '{name}': its function must take three parameters, \
                         |x, sigma, context| ({what})"
                    )
                    .into(),
                    pos,
                )
                .into()
            }
            _ => e,
        })?;
    let type_name = out.type_name();
    let v = out.try_cast::<Tensor>().ok_or_else(|| {
        script_err(format!(
            "model '{name}': its function returned a {type_name}, not a tensor shaped like x {:?} ({what})",
            x.dims()
        ))
    })?;
    if v.dims() != x.dims() {
        return Err(script_err(format!(
            "model '{name}': its function returned a tensor of shape {:?}, x is {:?} ({what})",
            v.dims(),
            x.dims()
        )));
    }
    let v = v.to_dtype(DType::F32).map_err(tensor_err)?;
    if !all_finite(&v).map_err(tensor_err)? {
        return Err(script_err(format!(
            "model '{name}': its function returned NaN or Inf ({what})"
        )));
    }
    Ok(v)
}

/// `sample` on a `model_from_fn` model.
pub fn sample(
    ctx: &NativeCallContext,
    rt: &Shared,
    m: &ModelHandle,
    f: &FnPtr,
    latent: &Tensor,
    o: &SampleOptions,
    on_step: &mut dyn FnMut(usize, usize, f32),
) -> ScriptResult<Tensor> {
    let at = call_site(ctx);
    if let Some(out) = rt
        .borrow_mut()
        .begin_external_sample(m.id, latent, o, &at)
        .map_err(script_err)?
    {
        return Ok(out);
    }
    let mut model = ScriptDenoiser {
        ctx,
        f,
        name: &m.name,
        positive: &o.positive,
        negative: o.negative.as_ref(),
        error: None,
    };
    let what = format!("sampling with '{}'", m.name);
    let ran = run_external_pass(&mut model, latent, o, &what, on_step);
    if let Some(e) = model.error.take() {
        return Err(e);
    }
    let (out, report) = ran.map_err(script_err)?;
    rt.borrow_mut()
        .finish_external_sample(m.id, o, report, &at)
        .map_err(script_err)?;
    Ok(out)
}

/// `predict` on a `model_from_fn` model: `t` is a timestep (σ·1000) as for
/// a Wan DiT, so the function sees `sigma = t / 1000`.
pub fn predict(
    ctx: &NativeCallContext,
    rt: &Shared,
    m: &ModelHandle,
    f: &FnPtr,
    x: &Tensor,
    t: &Tensor,
    context: &Tensor,
) -> ScriptResult<Tensor> {
    let at = call_site(ctx);
    let ts = t
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all()?.to_vec1::<f64>())
        .map_err(tensor_err)?;
    let Some(&t0) = ts.first().filter(|_| ts.iter().all(|v| *v == ts[0])) else {
        return Err(script_err(format!(
            "predict: a model_from_fn model takes one timestep (a number), got {ts:?}"
        )));
    };
    let dry = {
        let mut rt = rt.borrow_mut();
        rt.use_model(m.id, &at).map_err(script_err)?;
        rt.is_dry()
    };
    let out = if dry {
        crate::runtime::dry::stand_in(x.dims()).map_err(script_err)?
    } else {
        let x32 = x.to_dtype(DType::F32).map_err(tensor_err)?;
        call_fn(ctx, f, &m.name, &x32, t0 / 1000.0, context, "predict")?
    };
    rt.borrow_mut()
        .finish_external_predict(m.id, &at)
        .map_err(script_err)?;
    Ok(out)
}
