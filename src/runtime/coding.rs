//! The models around the DiT: text in (umT5: `encode_text`, `tokenize`,
//! `encode_ids`) and video out and in (the Wan VAE: `decode`, `encode`).
//! Each brings the model onto the device, runs it (or, planning, returns a
//! stand-in of the right shape), and records the use with its working memory.

use super::activations;
use super::dry;
use super::error::{plain_error, tensor_err, Result, RuntimeError};
use super::options::{DecodeOptions, TextOptions};
use super::registry::ModelId;
use super::runtime::Runtime;
use crate::models::wan_vae::{denormalize, normalize};
use candle_core::{Device, Tensor};

/// "decode: <candle's message>": VAE failures read as the verb that failed.
fn verb_err(verb: &'static str) -> impl Fn(candle_core::Error) -> RuntimeError {
    move |e| RuntimeError::Model(format!("{verb}: {}", plain_error(&e)))
}

impl Runtime {
    /// The DiT context for a prompt: [1, rows, d_model], zero-padded.
    pub fn encode_text(
        &mut self,
        id: ModelId,
        text: &str,
        o: TextOptions,
        at: &str,
    ) -> Result<Tensor> {
        let m = self.use_model(id, at)?;
        if let Some(dry::Planned::Text(cfg)) = m.planned() {
            let act = activations::text_encode(cfg, o.rows as u64);
            let out = dry::text_context(cfg, o.rows).map_err(tensor_err("encode_text"))?;
            self.note_use(id, at, "encode_text", act, String::new());
            return Ok(out);
        }
        let te = m.text_encoder().map_err(RuntimeError::Input)?;
        let act = activations::text_encode(te.encoder.config(), o.rows as u64);
        let e = te
            .encode_text(text, o.clean, o.rows)
            .map_err(|e| RuntimeError::Model(format!("encode_text: {e}")))?;
        if e.dropped > 0 {
            tracing::warn!(
                "encode_text: the prompt is {} tokens, more than {}: the last {} were dropped",
                e.tokens + e.dropped,
                o.rows,
                e.dropped
            );
        }
        tracing::info!("encoded {} tokens with {}", e.tokens, m.name);
        let note = format!("{} tokens", e.tokens);
        self.note_use(id, at, "encode_text", act, note);
        Ok(e.context)
    }

    /// Token ids and mask [1, L] for `text`, and how many tokens were cut.
    pub fn tokenize(
        &self,
        id: ModelId,
        text: &str,
        clean: bool,
        max_len: usize,
    ) -> Result<(Tensor, Tensor, usize)> {
        let te = self
            .model(id)?
            .text_encoder()
            .map_err(RuntimeError::Input)?;
        te.tokenize(text, clean, max_len)
            .map_err(|e| RuntimeError::Model(format!("tokenize: {e}")))
    }

    /// The encoder's last hidden state for ids and mask [B, L].
    pub fn encode_ids(&self, id: ModelId, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let te = self
            .model(id)?
            .text_encoder()
            .map_err(RuntimeError::Input)?;
        te.encode_ids(ids, mask)
            .map_err(|e| RuntimeError::Model(format!("encode_ids: {e}")))
    }

    /// A latent (model space unless `raw`) to video frames [B, 3, T, H, W]
    /// on the host, decoded chunk by chunk.
    pub fn decode(
        &mut self,
        id: ModelId,
        latent: &Tensor,
        o: DecodeOptions,
        at: &str,
    ) -> Result<Tensor> {
        let m = self.use_model(id, at)?;
        if let Some(dry::Planned::Vae(cfg)) = m.planned() {
            let act = activations::vae_decode(cfg, latent.dims());
            let shape = activations::vae_decoded_shape(latent.dims(), cfg.spatial_factor());
            let out = dry::stand_in(&shape).map_err(tensor_err("decode"))?;
            self.note_use(id, at, "decode", act, String::new());
            return Ok(out);
        }
        let vae = m.vae().map_err(RuntimeError::Input)?;
        let act = activations::vae_decode(&vae.kind(), latent.dims());
        let err = verb_err("decode");
        // The sampler works in the normalised latent space; the VAE in the raw one.
        let z = if o.raw {
            latent.clone()
        } else {
            denormalize(latent).map_err(&err)?
        };
        let started = std::time::Instant::now();
        let z = z.to_device(vae.device()).map_err(&err)?;
        let total = z.dim(2).map_err(&err)?;
        let mut parts = Vec::with_capacity(total);
        vae.decode_each(&z, o.clamp, &mut |i, c| {
            // Each frame chunk comes back to the host as it is done.
            parts.push(c.to_device(&Device::Cpu)?);
            tracing::debug!("decoded latent frame {}/{total}", i + 1);
            Ok(())
        })
        .map_err(&err)?;
        let video = Tensor::cat(&parts, 2).map_err(tensor_err("decode"))?;
        let note = format!(
            "{total} latent frames to {:?} in {:.1}s",
            video.dims(),
            started.elapsed().as_secs_f64()
        );
        tracing::info!("decoded {note} with {}", m.name);
        self.note_use(id, at, "decode", act, note);
        Ok(video)
    }

    /// Video frames [B, 3, T, H, W] in [-1, 1] to a latent (model space
    /// unless `raw`), on the host.
    pub fn encode(&mut self, id: ModelId, video: &Tensor, raw: bool, at: &str) -> Result<Tensor> {
        let m = self.use_model(id, at)?;
        if let Some(dry::Planned::Vae(cfg)) = m.planned() {
            let act = activations::vae_encode(cfg, video.dims());
            let [b, _, t, h, w] = video.dims() else {
                return Err(RuntimeError::Input(format!(
                    "encode: expected a video [B, 3, T, H, W], got {:?}",
                    video.dims()
                )));
            };
            let s = cfg.spatial_factor();
            let out = dry::stand_in(&[*b, cfg.z_dim(), (t.max(&1) - 1) / 4 + 1, h / s, w / s])
                .map_err(tensor_err("encode"))?;
            self.note_use(id, at, "encode", act, String::new());
            return Ok(out);
        }
        let vae = m.vae().map_err(RuntimeError::Input)?;
        let act = activations::vae_encode(&vae.kind(), video.dims());
        let err = verb_err("encode");
        let mu = video
            .to_device(vae.device())
            .and_then(|v| vae.encode(&v)?.to_device(&Device::Cpu))
            .map_err(&err)?;
        self.note_use(id, at, "encode", act, String::new());
        if raw {
            Ok(mu)
        } else {
            normalize(&mu).map_err(&err)
        }
    }
}
