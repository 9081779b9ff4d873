//! Text-encoder primitives: encode_text, tokenize, encode_ids.

use super::models::ModelHandle;
use super::Shared;
use crate::host::errors::{call_site, script_err, ScriptResult};
use crate::host::options::Opts;
use crate::models::umt5::MAX_TOKENS;
use crate::runtime::text_encoder::CONTEXT_ROWS;
use crate::runtime::{activations, dry};
use candle_core::Tensor;
use rhai::{Dynamic, Engine, Map, NativeCallContext};

pub fn register(engine: &mut Engine, rt: &Shared) {
    let r = rt.clone();
    let encode_text = move |ctx: NativeCallContext,
                            m: ModelHandle,
                            text: &str,
                            map: Map|
          -> ScriptResult<Tensor> {
        let o = Opts::documented("encode_text", map)?;
        let clean = o.bool("clean", true)?;
        let rows = o.usize("rows", CONTEXT_ROWS)?;
        if rows == 0 || rows > MAX_TOKENS * 16 {
            return Err(script_err(format!(
                "encode_text: rows must be between 1 and {}, got {rows}",
                MAX_TOKENS * 16
            )));
        }
        let at = call_site(&ctx);
        let mut rt = r.borrow_mut();
        let lm = rt.use_model(m.id, &at).map_err(script_err)?;
        if let Some(dry::Planned::Text(cfg)) = lm.planned() {
            let act = activations::text_encode(cfg, rows as u64);
            let out = dry::text_context(cfg, rows).map_err(crate::host::errors::tensor_err)?;
            rt.note_use(m.id, &at, "encode_text", act, String::new());
            return Ok(out);
        }
        let te = lm.text_encoder().map_err(script_err)?;
        let act = activations::text_encode(te.encoder.config(), rows as u64);
        let e = te
            .encode_text(text, clean, rows)
            .map_err(|e| script_err(format!("encode_text: {e}")))?;
        if e.dropped > 0 {
            tracing::warn!(
                "encode_text: the prompt is {} tokens, more than {rows}: the last {} were dropped",
                e.tokens + e.dropped,
                e.dropped
            );
        }
        tracing::info!("encoded {} tokens with {}", e.tokens, lm.name);
        let note = format!("{} tokens", e.tokens);
        rt.note_use(m.id, &at, "encode_text", act, note);
        Ok(e.context)
    };
    let et = encode_text.clone();
    engine.register_fn(
        "encode_text",
        move |ctx: NativeCallContext, m: ModelHandle, text: &str| et(ctx, m, text, Map::new()),
    );
    engine.register_fn("encode_text", encode_text);

    let r = rt.clone();
    let tokenize = move |m: ModelHandle, text: &str, map: Map| -> ScriptResult<Map> {
        let o = Opts::documented("tokenize", map)?;
        let clean = o.bool("clean", true)?;
        let max_len = o.usize("max_len", MAX_TOKENS)?;
        let rt = r.borrow();
        let te = rt
            .model(m.id)
            .and_then(|lm| {
                lm.text_encoder()
                    .map_err(crate::runtime::RuntimeError::Input)
            })
            .map_err(script_err)?;
        let (ids, mask, dropped) = te
            .tokenize(text, clean, max_len)
            .map_err(|e| script_err(format!("tokenize: {e}")))?;
        let mut out = Map::new();
        out.insert("ids".into(), Dynamic::from(ids));
        out.insert("mask".into(), Dynamic::from(mask));
        out.insert("dropped".into(), Dynamic::from(dropped as i64));
        Ok(out)
    };
    let tk = tokenize.clone();
    engine.register_fn("tokenize", move |m: ModelHandle, text: &str| {
        tk(m, text, Map::new())
    });
    engine.register_fn("tokenize", tokenize);

    let r = rt.clone();
    engine.register_fn(
        "encode_ids",
        move |m: ModelHandle, ids: Tensor, mask: Tensor| -> ScriptResult<Tensor> {
            let rt = r.borrow();
            let lm = rt.model(m.id).map_err(script_err)?;
            let te = lm.text_encoder().map_err(script_err)?;
            te.encode_ids(&ids, &mask)
                .map_err(|e| script_err(format!("encode_ids: {e}")))
        },
    );
}
