//! VAE primitives: decode (latent to video) and encode (video to latent).

use super::models::ModelHandle;
use super::Shared;
use crate::host::errors::{script_err, tensor_err, ScriptResult};
use crate::host::options::Opts;
use crate::models::wan_vae::{denormalize, normalize};
use candle_core::Tensor;
use rhai::{Engine, Map};

pub fn register(engine: &mut Engine, rt: &Shared) {
    let r = rt.clone();
    let decode = move |m: ModelHandle, latent: Tensor, map: Map| -> ScriptResult<Tensor> {
        let o = Opts::documented("decode", map)?;
        let (raw, clamp) = (o.bool("raw", false)?, o.bool("clamp", true)?);
        let rt = r.borrow();
        let lm = rt.model(m.id).map_err(script_err)?;
        let vae = lm.vae().map_err(script_err)?;
        // The sampler works in the normalised latent space; the VAE in the raw one.
        let z = if raw {
            latent
        } else {
            denormalize(&latent).map_err(|e| script_err(format!("decode: {}", plain(&e))))?
        };
        let started = std::time::Instant::now();
        let mut chunks = vae
            .decode_chunks(&z, clamp)
            .map_err(|e| script_err(format!("decode: {}", plain(&e))))?;
        let total = chunks.len_latent();
        let mut parts = Vec::with_capacity(total);
        for (i, c) in chunks.by_ref().enumerate() {
            parts.push(c.map_err(|e| script_err(format!("decode: {}", plain(&e))))?);
            tracing::debug!("decoded latent frame {}/{total}", i + 1);
        }
        let video = Tensor::cat(&parts, 2).map_err(tensor_err)?;
        tracing::info!(
            "decoded {total} latent frames to {:?} with {} in {:.1}s",
            video.dims(),
            lm.name,
            started.elapsed().as_secs_f64()
        );
        Ok(video)
    };
    let d = decode.clone();
    engine.register_fn("decode", move |m: ModelHandle, latent: Tensor| {
        d(m, latent, Map::new())
    });
    engine.register_fn("decode", decode);

    let r = rt.clone();
    let encode = move |m: ModelHandle, video: Tensor, map: Map| -> ScriptResult<Tensor> {
        let o = Opts::documented("encode", map)?;
        let raw = o.bool("raw", false)?;
        let rt = r.borrow();
        let lm = rt.model(m.id).map_err(script_err)?;
        let vae = lm.vae().map_err(script_err)?;
        let mu = vae
            .encode(&video)
            .map_err(|e| script_err(format!("encode: {}", plain(&e))))?;
        if raw {
            Ok(mu)
        } else {
            normalize(&mu).map_err(|e| script_err(format!("encode: {}", plain(&e))))
        }
    };
    let e = encode.clone();
    engine.register_fn("encode", move |m: ModelHandle, video: Tensor| {
        e(m, video, Map::new())
    });
    engine.register_fn("encode", encode);
}

fn plain(e: &candle_core::Error) -> String {
    crate::runtime::runtime::plain_error(e)
}
