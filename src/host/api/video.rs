//! VAE primitives: decode (latent to video) and encode (video to latent).

use super::ModelHandle;
use super::Shared;
use crate::host::errors::{call_site, script_err, ScriptResult};
use crate::host::options::Opts;
use crate::runtime::DecodeOptions;
use candle_core::Tensor;
use rhai::{Engine, Map, NativeCallContext};

pub fn register(engine: &mut Engine, rt: &Shared) {
    let r = rt.clone();
    let decode = move |ctx: NativeCallContext,
                       m: ModelHandle,
                       latent: Tensor,
                       map: Map|
          -> ScriptResult<Tensor> {
        let o = Opts::documented("decode", map)?;
        let opts = DecodeOptions {
            raw: o.bool("raw", false)?,
            clamp: o.bool("clamp", true)?,
        };
        let at = call_site(&ctx);
        r.borrow_mut()
            .decode(m.id, &latent, opts, &at)
            .map_err(script_err)
    };
    let d = decode.clone();
    engine.register_fn(
        "decode",
        move |ctx: NativeCallContext, m: ModelHandle, latent: Tensor| d(ctx, m, latent, Map::new()),
    );
    engine.register_fn("decode", decode);

    let r = rt.clone();
    let encode = move |ctx: NativeCallContext,
                       m: ModelHandle,
                       video: Tensor,
                       map: Map|
          -> ScriptResult<Tensor> {
        let o = Opts::documented("encode", map)?;
        let raw = o.bool("raw", false)?;
        let at = call_site(&ctx);
        r.borrow_mut()
            .encode(m.id, &video, raw, &at)
            .map_err(script_err)
    };
    let e = encode.clone();
    engine.register_fn(
        "encode",
        move |ctx: NativeCallContext, m: ModelHandle, video: Tensor| e(ctx, m, video, Map::new()),
    );
    engine.register_fn("encode", encode);
}
