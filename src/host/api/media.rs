//! Media primitives: load_image, save_images, save_video.

use super::SharedPolicy;
use crate::host::errors::{script_err, ScriptResult};
use crate::host::options::Opts;
use crate::media;
use candle_core::Tensor;
use rhai::{Array, Dynamic, Engine, Map};

pub fn register(engine: &mut Engine, policy: &SharedPolicy) {
    let pol = policy.clone();
    engine.register_fn("load_image", move |path: &str| -> ScriptResult<Tensor> {
        let p = pol.borrow().read("load_image", path).map_err(script_err)?;
        media::load_image(&p).map_err(|e| script_err(format!("load_image: {e}")))
    });

    let pol = policy.clone();
    engine.register_fn(
        "save_images",
        move |video: Tensor, pattern: &str| -> ScriptResult<Array> {
            let p = pol
                .borrow()
                .write("save_images", pattern)
                .map_err(script_err)?;
            if !pol.borrow().writes_enabled() {
                return Ok(vec![Dynamic::from(p.display().to_string())]);
            }
            let frames = media::frames_from_video(&video)
                .map_err(|e| script_err(format!("save_images: {e}")))?;
            let written = media::save_png_sequence(&frames, &p)
                .map_err(|e| script_err(format!("save_images: {e}")))?;
            tracing::info!("wrote {} frames as {}", written.len(), p.display());
            Ok(written
                .into_iter()
                .map(|w| Dynamic::from(w.display().to_string()))
                .collect())
        },
    );

    let pol = policy.clone();
    let save_video = move |video: Tensor, path: &str, map: Map| -> ScriptResult<String> {
        let o = Opts::documented("save_video", map)?;
        let fps = o.f64("fps", 16.0)?;
        let p = pol.borrow().write("save_video", path).map_err(script_err)?;
        if !pol.borrow().writes_enabled() {
            return Ok(p.display().to_string());
        }
        let frames =
            media::frames_from_video(&video).map_err(|e| script_err(format!("save_video: {e}")))?;
        media::save_video(&frames, &p, fps).map_err(|e| script_err(format!("save_video: {e}")))?;
        tracing::info!(
            "wrote {} frames at {fps} fps to {}",
            frames.len(),
            p.display()
        );
        Ok(p.display().to_string())
    };
    let sv = save_video.clone();
    engine.register_fn("save_video", move |v: Tensor, path: &str| {
        sv(v, path, Map::new())
    });
    engine.register_fn("save_video", save_video);
}
