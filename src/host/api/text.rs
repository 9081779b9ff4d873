//! Text-encoder primitives: encode_text, tokenize, encode_ids.

use super::ModelHandle;
use super::Shared;
use crate::host::errors::{call_site, script_err, ScriptResult};
use crate::host::options::Opts;
use crate::models::umt5::MAX_TOKENS;
use crate::runtime::text_encoder::CONTEXT_ROWS;
use crate::runtime::TextOptions;
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
        r.borrow_mut()
            .encode_text(m.id, text, TextOptions { clean, rows }, &at)
            .map_err(script_err)
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
        let (ids, mask, dropped) = r
            .borrow()
            .tokenize(m.id, text, clean, max_len)
            .map_err(script_err)?;
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
            r.borrow().encode_ids(m.id, &ids, &mask).map_err(script_err)
        },
    );
}
