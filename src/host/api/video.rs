//! VAE primitives: decode (latent to video) and encode (video to latent).

use super::models::ModelHandle;
use super::Shared;
use crate::host::errors::{call_site, script_err, tensor_err, ScriptResult};
use crate::host::options::Opts;
use crate::models::wan_vae::{denormalize, normalize};
use crate::runtime::{activations, dry};
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
        let (raw, clamp) = (o.bool("raw", false)?, o.bool("clamp", true)?);
        let at = call_site(&ctx);
        let mut rt = r.borrow_mut();
        let lm = rt.use_model(m.id, &at).map_err(script_err)?;
        if let Some(dry::Planned::Vae(cfg)) = lm.planned() {
            let act = activations::vae_decode(cfg, latent.dims());
            let out = dry::stand_in(&activations::vae_decoded_shape(latent.dims()))
                .map_err(tensor_err)?;
            rt.note_use(m.id, &at, "decode", act, String::new());
            return Ok(out);
        }
        let vae = lm.vae().map_err(script_err)?;
        let act = activations::vae_decode(vae.config(), latent.dims());
        // The sampler works in the normalised latent space; the VAE in the raw one.
        let z = if raw {
            latent
        } else {
            denormalize(&latent).map_err(|e| script_err(format!("decode: {}", plain(&e))))?
        };
        let started = std::time::Instant::now();
        let z = z
            .to_device(vae.device())
            .map_err(|e| script_err(format!("decode: {}", plain(&e))))?;
        let mut chunks = vae
            .decode_chunks(&z, clamp)
            .map_err(|e| script_err(format!("decode: {}", plain(&e))))?;
        let total = chunks.len_latent();
        let mut parts = Vec::with_capacity(total);
        for (i, c) in chunks.by_ref().enumerate() {
            // Each frame chunk comes back to the host as it is done.
            let c = c.and_then(|c| c.to_device(&candle_core::Device::Cpu));
            parts.push(c.map_err(|e| script_err(format!("decode: {}", plain(&e))))?);
            tracing::debug!("decoded latent frame {}/{total}", i + 1);
        }
        let video = Tensor::cat(&parts, 2).map_err(tensor_err)?;
        let note = format!(
            "{total} latent frames to {:?} in {:.1}s",
            video.dims(),
            started.elapsed().as_secs_f64()
        );
        tracing::info!("decoded {note} with {}", lm.name);
        rt.note_use(m.id, &at, "decode", act, note);
        Ok(video)
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
        let mut rt = r.borrow_mut();
        let lm = rt.use_model(m.id, &at).map_err(script_err)?;
        if let Some(dry::Planned::Vae(cfg)) = lm.planned() {
            let act = activations::vae_encode(cfg, video.dims());
            let out = match video.dims() {
                [b, _, t, h, w] => {
                    dry::stand_in(&[*b, cfg.z_dim, (t.max(&1) - 1) / 4 + 1, h / 8, w / 8])
                }
                d => Err(candle_core::Error::Msg(format!(
                    "encode: expected a video [B, 3, T, H, W], got {d:?}"
                ))),
            }
            .map_err(tensor_err)?;
            rt.note_use(m.id, &at, "encode", act, String::new());
            return Ok(out);
        }
        let vae = lm.vae().map_err(script_err)?;
        let act = activations::vae_encode(vae.config(), video.dims());
        let mu = video
            .to_device(vae.device())
            .and_then(|v| vae.encode(&v)?.to_device(&candle_core::Device::Cpu))
            .map_err(|e| script_err(format!("encode: {}", plain(&e))))?;
        rt.note_use(m.id, &at, "encode", act, String::new());
        if raw {
            Ok(mu)
        } else {
            normalize(&mu).map_err(|e| script_err(format!("encode: {}", plain(&e))))
        }
    };
    let e = encode.clone();
    engine.register_fn(
        "encode",
        move |ctx: NativeCallContext, m: ModelHandle, video: Tensor| e(ctx, m, video, Map::new()),
    );
    engine.register_fn("encode", encode);
}

fn plain(e: &candle_core::Error) -> String {
    crate::runtime::runtime::plain_error(e)
}
