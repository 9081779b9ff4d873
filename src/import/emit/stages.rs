//! The non-sampler nodes: prompts, latents, image-to-video, outputs, and
//! placeholders for what baton has no primitive for.

use super::{Ctx, Val};
use crate::import::names::{self, comment_text, float, literal, string};
use crate::import::nodes;
use crate::import::workflow::{Input, Node};
use serde_json::Value;

impl Ctx<'_> {
    pub(super) fn placeholder(&mut self, n: &Node) -> Result<(), String> {
        if !self.o.allow_unknown {
            return Err(self.err(n, "no baton equivalent (use --allow-unknown)"));
        }
        let var = match self.vals.get(&(n.id.clone(), 0)) {
            Some(Val::Foreign { var, .. }) => var.clone(),
            _ => self.namer.fresh(&names::snake(&n.class)),
        };
        let mut lines = vec![self.header(
            n,
            "no baton equivalent; placeholder (imported with --allow-unknown)",
        )];
        for (name, i) in &n.inputs {
            if let Input::Value(v) = i {
                lines.push(format!("//   {name} = {}", comment_text(&literal(v), 80)));
            }
        }
        lines.push(format!(
            "throw {};",
            string(&format!(
                "node {} ({}) has no baton equivalent: replace this placeholder",
                n.id, n.class
            ))
        ));
        lines.push(format!("let {var} = ();"));
        lines.extend(self.pending.remove(&var).unwrap_or_default());
        self.step(n, lines, vec![]);
        self.unsupported.push(n.label());
        Ok(())
    }

    /// Which way a conditioning goes: the input names of its consumers
    /// (looking through memory nodes), else its title.
    fn role(&self, n: &Node) -> Option<&'static str> {
        let mut names = Vec::new();
        let mut frontier = vec![n.id.clone()];
        while let Some(id) = frontier.pop() {
            for (to, name) in self.consumers.get(&(id, 0)).into_iter().flatten() {
                match self.g.node(to) {
                    Some(m) if nodes::is_memory(&m.class) && names.len() < 64 => {
                        frontier.push(m.id.clone())
                    }
                    _ => names.push(name.as_str()),
                }
            }
        }
        let title = n.title.as_deref().unwrap_or("").to_ascii_lowercase();
        if !names.is_empty() && names.iter().all(|&x| x == "positive") {
            Some("positive")
        } else if !names.is_empty() && names.iter().all(|&x| x == "negative") {
            Some("negative")
        } else if title.contains("positive") {
            Some("positive")
        } else if title.contains("negative") {
            Some("negative")
        } else {
            None
        }
    }

    pub(super) fn encode(&mut self, n: &Node) -> Result<(), String> {
        let (h, te) = self.handle_of(n, "clip")?;
        let text = self.text(n, "text")?;
        let role = self.role(n);
        let expr = match role {
            Some("positive") => self.param("prompt", Value::String(text), "Positive prompt"),
            Some(_) => self.param("negative_prompt", Value::String(text), "Negative prompt"),
            None => string(&text),
        };
        let base = match (role, names::from_title(n.title.as_deref(), &n.class)) {
            (Some(r), _) => r.to_string(),
            (None, Some(t)) => t,
            (None, None) => "conditioning".into(),
        };
        let var = self.namer.fresh(&base);
        let lines = vec![
            self.header(n, ""),
            format!("let {var} = encode_text({te}, {expr});"),
        ];
        self.step(n, lines, h.into_iter().collect());
        self.set(n, 0, Val::Var(var));
        Ok(())
    }

    fn size(&mut self, n: &Node) -> Result<(String, String, String, i64), String> {
        let w = self.int(n, "width")?;
        let h = self.int(n, "height")?;
        let len = self.int(n, "length")?;
        let batch = n
            .input("batch_size")
            .map(|_| self.int(n, "batch_size"))
            .transpose()?
            .unwrap_or(1);
        let w = self.param(
            "width",
            w.into(),
            "Video width in pixels (a multiple of 16)",
        );
        let h = self.param(
            "height",
            h.into(),
            "Video height in pixels (a multiple of 16)",
        );
        let len = self.param("length", len.into(), "Frames (4k+1)");
        Ok((w, h, len, batch))
    }

    pub(super) fn latent(&mut self, n: &Node) -> Result<(), String> {
        let (w, h, len, batch) = self.size(n)?;
        let var = self.namer.fresh(
            &names::from_title(n.title.as_deref(), &n.class).unwrap_or_else(|| "latent".into()),
        );
        let batch = if batch == 1 {
            String::new()
        } else {
            format!(", batch: {batch}")
        };
        let mut lines = Vec::new();
        let mut uses = Vec::new();
        if n.class == "Wan22ImageToVideoLatent" {
            let image = self.var_of(n, "start_image")?;
            let (vh, vae) = self.handle_of(n, "vae")?;
            uses.extend(vh);
            let c = self.namer.fresh("ti2v");
            let (start, what) = match &image {
                Some(i) => (
                    format!("start_image: {i}, "),
                    "TI2V-5B: the start image encoded as the clean first latent frame",
                ),
                None => (
                    String::new(),
                    "TI2V-5B without a start image: text to video",
                ),
            };
            lines.push(self.header(n, what));
            lines.push(format!(
                "let {c} = ti2v_latent({vae}, #{{ {start}width: {w}, height: {h}, length: {len}{} }});",
                batch.replace("batch", "batch_size")
            ));
            lines.push(format!("let {var} = {c}.latent;"));
            if image.is_some() {
                // Its mask keeps the image frame clean at timestep 0 in every sampler using the latent.
                self.carried
                    .insert(var.clone(), format!("noise_mask: {c}.noise_mask"));
            }
        } else {
            lines.push(self.header(n, ""));
            lines.push(format!(
                "let {var} = empty_latent(#{{ width: {w}, height: {h}, frames: {len}{batch} }});"
            ));
        }
        self.step(n, lines, uses);
        self.set(n, 0, Val::Var(var));
        Ok(())
    }

    pub(super) fn image_to_video(&mut self, n: &Node) -> Result<(), String> {
        let (w, h, len, batch) = self.size(n)?;
        let pos = self
            .var_of(n, "positive")?
            .ok_or_else(|| self.err(n, "positive is not connected"))?;
        let neg = self.var_of(n, "negative")?;
        if n.input("clip_vision_output").is_some() || n.input("clip_vision_start_image").is_some() {
            // Wan 2.2 leaves these unconnected; Wan 2.1's I2V fed a CLIP image embedding there.
            return Err(self.err(
                n,
                "clip_vision input is connected: the CLIP image embedding of Wan 2.1 I2V is not in baton (Wan 2.2 leaves it unconnected)",
            ));
        }
        let (vh, vae) = self.handle_of(n, "vae")?;
        let start = self.var_of(n, "start_image")?;
        let end = match n.class.as_str() {
            "WanFirstLastFrameToVideo" => self.var_of(n, "end_image")?,
            _ => None,
        };
        let mut images = Vec::new();
        if let Some(s) = &start {
            images.push(format!("start_image: {s}, "));
        }
        if let Some(e) = &end {
            images.push(format!("end_image: {e}, "));
        }
        if images.is_empty() {
            let what = if n.class == "WanFirstLastFrameToVideo" {
                "neither start_image nor end_image is connected"
            } else {
                "start_image is not connected"
            };
            return Err(self.err(n, what));
        }
        let var = self.namer.fresh("latent");
        let c = self.namer.fresh("i2v");
        let (verb, what) = if n.class == "WanFirstLastFrameToVideo" {
            ("first_last_to_video", "the first and last frames encoded; the DiT gets the mask and image latent as image_cond")
        } else {
            (
                "image_to_video",
                "the start image encoded; the DiT gets the mask and image latent as image_cond",
            )
        };
        let batch = if batch == 1 {
            String::new()
        } else {
            format!(", batch_size: {batch}")
        };
        let lines = vec![
            self.header(n, what),
            format!(
                "let {c} = {verb}({vae}, #{{ {}width: {w}, height: {h}, length: {len}{batch} }});",
                images.concat()
            ),
            format!("let {var} = {c}.latent;"),
        ];
        // ComfyUI puts the image latent on both conditionings; baton's
        // samplers take it once, as an option of the pass using the positive.
        self.carried
            .insert(pos.clone(), format!("image_cond: {c}.image_cond"));
        self.step(n, lines, vh.into_iter().collect());
        self.set(n, 0, Val::Var(pos));
        if let Some(neg) = neg {
            self.set(n, 1, Val::Var(neg));
        }
        self.set(n, 2, Val::Var(var));
        Ok(())
    }

    /// `LoadImage`: the file becomes a recipe parameter, `image` for a start
    /// image, `end_image` for one that only feeds an `end_image` input.
    pub(super) fn load_image(&mut self, n: &Node) -> Result<(), String> {
        let file = self.text(n, "image")?;
        let feeds_end = self
            .consumers
            .get(&(n.id.clone(), 0))
            .is_some_and(|c| !c.is_empty() && c.iter().all(|(_, input)| input == "end_image"));
        let (param, help, base) = if feeds_end {
            (
                "end_image",
                "End image (read under the model roots or the script's folder)",
                "end_frame",
            )
        } else {
            (
                "image",
                "Start image (read under the model roots or the script's folder)",
                "start_image",
            )
        };
        let p = self.param(param, Value::String(file), help);
        let var = self
            .namer
            .fresh(&names::from_title(n.title.as_deref(), &n.class).unwrap_or_else(|| base.into()));
        let lines = vec![self.header(n, ""), format!("let {var} = load_image({p});")];
        self.step(n, lines, vec![]);
        self.set(n, 0, Val::Var(var));
        Ok(())
    }

    pub(super) fn save(&mut self, n: &Node) -> Result<(), String> {
        let (frames, fps) = match self.need(
            n,
            if n.class == "SaveVideo" {
                "video"
            } else {
                "images"
            },
        )? {
            Val::Video { images, fps } => (images, fps),
            Val::Var(v) | Val::Foreign { var: v, .. } => {
                let fps = if n.class == "SaveAnimatedWEBP" {
                    self.num(n, "fps")?
                } else {
                    16.0
                };
                (v, fps)
            }
            _ => return Err(self.err(n, "its input is not a video")),
        };
        let prefix = self.text(n, "filename_prefix")?;
        let prefix = prefix.trim_start_matches('/');
        let lines = match n.class.as_str() {
            "SaveImage" => vec![
                self.header(n, ""),
                format!(
                    "save_images({frames}, {});",
                    string(&format!("{prefix}_%05d.png"))
                ),
            ],
            "SaveAnimatedWEBP" => vec![
                self.header(n, "the .webp goes through ffmpeg"),
                format!(
                    "save_video({frames}, {}, #{{ fps: {} }});",
                    string(&format!("{prefix}.webp")),
                    float(fps)
                ),
            ],
            _ => vec![
                self.header(n, "the GIF needs nothing; the mp4 needs ffmpeg on PATH"),
                format!(
                    "save_video({frames}, {}, #{{ fps: {} }});",
                    string(&format!("{prefix}.gif")),
                    float(fps)
                ),
                "try {".into(),
                format!(
                    "    save_video({frames}, {}, #{{ fps: {} }});",
                    string(&format!("{prefix}.mp4")),
                    float(fps)
                ),
                "} catch (e) {".into(),
                "    print(`no mp4: ${e}`);".into(),
                "}".into(),
            ],
        };
        self.step(n, lines, vec![]);
        Ok(())
    }
}
