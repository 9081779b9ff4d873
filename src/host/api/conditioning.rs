//! Image-conditioning primitives, named after ComfyUI's Wan nodes:
//! image_to_video, first_last_to_video, ti2v_latent.

use super::ModelHandle;
use super::Shared;
use crate::host::errors::{call_site, script_err, ScriptResult};
use crate::host::options::Opts;
use crate::runtime::conditioning::FrameNode;
use crate::runtime::{FrameCond, FrameCondOptions};
use rhai::{Dynamic, Engine, Map, NativeCallContext};

fn options(node: FrameNode, map: Map) -> ScriptResult<FrameCondOptions> {
    let o = Opts::documented(node.name(), map)?;
    let default_size = if node == FrameNode::Ti2vLatent {
        (1280, 704, 121)
    } else {
        (832, 480, 81)
    };
    Ok(FrameCondOptions {
        start: o.opt_tensor("start_image")?,
        end: if node == FrameNode::FirstLastToVideo {
            o.opt_tensor("end_image")?
        } else {
            None
        },
        width: o.usize("width", default_size.0)?,
        height: o.usize("height", default_size.1)?,
        length: o.usize("length", default_size.2)?,
        batch: o.usize("batch_size", 1)?,
    })
}

fn to_map(c: FrameCond) -> Map {
    let mut m = Map::new();
    m.insert("latent".into(), Dynamic::from(c.latent));
    if let Some(t) = c.image_cond {
        m.insert("image_cond".into(), Dynamic::from(t));
    }
    if let Some(t) = c.noise_mask {
        m.insert("noise_mask".into(), Dynamic::from(t));
    }
    m
}

pub fn register(engine: &mut Engine, rt: &Shared) {
    for node in [
        FrameNode::ImageToVideo,
        FrameNode::FirstLastToVideo,
        FrameNode::Ti2vLatent,
    ] {
        let r = rt.clone();
        engine.register_fn(
            node.name(),
            move |ctx: NativeCallContext, vae: ModelHandle, map: Map| -> ScriptResult<Map> {
                let opts = options(node, map)?;
                let at = call_site(&ctx);
                r.borrow_mut()
                    .frame_cond(vae.id, node, &opts, &at)
                    .map(to_map)
                    .map_err(script_err)
            },
        );
    }
}
