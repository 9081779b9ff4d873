//! The script text: each mapped node becomes the primitive calls a person
//! would write, models are loaded right before their first use and deleted
//! right after their last, and the two-expert pattern goes through the
//! stdlib recipe that already does exactly that.

mod placement;
mod sampling;
mod stages;

use super::names::{self, float, literal, Namer};
use super::nodes;
use super::workflow::{Graph, Input, Node};
use crate::host::params_text::{self as text, Typed};
use sampling::WAN_DEFAULT_SHIFT;
use serde_json::Value;
use std::collections::HashMap;

/// What a model handle holds; DiTs and text encoders are the large ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dit,
    TextEncoder,
    Vae,
}

impl Kind {
    pub fn large(self) -> bool {
        !matches!(self, Kind::Vae)
    }
}

/// One `load_model` in the script.
#[derive(Clone, Debug)]
pub struct Handle {
    pub var: String,
    pub kind: Kind,
    /// The file as the workflow names it.
    pub file: String,
    pub node: String,
    /// LoRAs applied right after the load: (files key, file, strength, node).
    pub loras: Vec<(String, String, f64, String)>,
    /// Loaded and deleted inside `wan::two_stage`, not by the script itself.
    pub in_recipe: bool,
}

/// A recipe parameter the script declares.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub value: Value,
    pub help: String,
}

/// The sampling settings of one pass, as the script runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerSettings {
    pub node: String,
    pub model: String,
    pub steps: i64,
    pub start: i64,
    /// None: to the end.
    pub end: Option<i64>,
    pub cfg: f64,
    pub sampler: String,
    pub scheduler: String,
    pub shift: f64,
    pub seed: Option<i64>,
    pub add_noise: bool,
    pub leftover_noise: bool,
}

pub struct EmitOptions<'a> {
    pub source: &'a str,
    /// Keep every model loaded (ComfyUI's way), for comparison.
    pub keep_resident: bool,
    pub allow_unknown: bool,
    /// NAME=VALUE overrides of parameter defaults.
    pub param_defaults: &'a [(String, String)],
    /// The path expression for a workflow file name, and a note on where it came from.
    pub file: &'a dyn Fn(&str, &str) -> (String, String),
}

pub struct Emitted {
    pub body: String,
    pub files: Vec<(String, String, String)>,
    pub params: Vec<Param>,
    pub handles: Vec<Handle>,
    pub spans: Vec<Option<(usize, usize)>>,
    /// Labels of the nodes that start each step, for the report.
    pub step_labels: Vec<String>,
    pub coexisting: Vec<(usize, usize)>,
    pub order: Vec<String>,
    pub samplers: Vec<SamplerSettings>,
    pub memory_nodes: Vec<String>,
    pub two_stage: bool,
    pub unsupported: Vec<String>,
}

/// A value flowing along a link, as the script sees it.
#[derive(Clone, Debug)]
enum Val {
    Model {
        h: usize,
        shift: Option<f64>,
        loras: usize,
    },
    Clip(usize),
    Vae(usize),
    /// A script variable (conditioning, latent, image, placeholder).
    Var(String),
    Video {
        images: String,
        fps: f64,
    },
    /// An unknown node's output (--allow-unknown); a model keeps its shift.
    Foreign {
        var: String,
        shift: Option<f64>,
    },
}

struct Step {
    label: String,
    lines: Vec<String>,
    uses: Vec<usize>,
}

const PARAM_NAMES: &[&str] = &[
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "split",
    "width",
    "height",
    "length",
    "image",
    "end_image",
    "files",
    "wan",
];

struct Ctx<'a> {
    o: &'a EmitOptions<'a>,
    g: &'a Graph,
    namer: Namer,
    vals: HashMap<(String, usize), Val>,
    handles: Vec<Handle>,
    params: Vec<Param>,
    files: Vec<(String, String, String)>,
    steps: Vec<Step>,
    samplers: Vec<SamplerSettings>,
    memory_nodes: Vec<String>,
    consumers: HashMap<(String, usize), Vec<(String, String)>>,
    skip: Vec<String>,
    two_stage: bool,
    unsupported: Vec<String>,
    /// Lines applied to a placeholder model right after it (its LoRAs).
    pending: HashMap<String, Vec<String>>,
    /// `sample` options a variable brings to the samplers using it: I2V's
    /// `image_cond` on its positive, TI2V's `noise_mask` on its latent.
    carried: HashMap<String, String>,
}

pub fn emit(g: &Graph, order: &[usize], o: &EmitOptions) -> Result<Emitted, String> {
    let mut consumers: HashMap<(String, usize), Vec<(String, String)>> = HashMap::new();
    for n in &g.nodes {
        for (name, i) in &n.inputs {
            if let Input::Link { node, slot } = i {
                consumers
                    .entry((node.clone(), *slot))
                    .or_default()
                    .push((n.id.clone(), name.clone()));
            }
        }
    }
    let mut c = Ctx {
        o,
        g,
        namer: Namer::new(PARAM_NAMES),
        vals: HashMap::new(),
        handles: Vec::new(),
        params: Vec::new(),
        files: Vec::new(),
        steps: Vec::new(),
        samplers: Vec::new(),
        memory_nodes: Vec::new(),
        consumers,
        skip: Vec::new(),
        two_stage: false,
        unsupported: Vec::new(),
        pending: HashMap::new(),
        carried: HashMap::new(),
    };
    // Models first: loads are placed at first use, so the loader's position
    // in the graph does not matter, and every model value is known before
    // the samplers are looked at as a pair.
    for &i in order {
        let n = &g.nodes[i];
        if matches!(
            n.class.as_str(),
            "UNETLoader" | "CLIPLoader" | "VAELoader" | "LoraLoaderModelOnly" | "ModelSamplingSD3"
        ) {
            c.model_node(n)?;
        } else if !nodes::is_mapped(&n.class) && !nodes::is_memory(&n.class) {
            if !o.allow_unknown {
                return Err(c.err(n, "no baton equivalent (use --allow-unknown)"));
            }
            let var = c.namer.fresh(&names::snake(&n.class));
            for slot in 0..8 {
                c.set(
                    n,
                    slot,
                    Val::Foreign {
                        var: var.clone(),
                        shift: None,
                    },
                );
            }
        }
    }
    for &i in order {
        let n = &g.nodes[i];
        if c.skip.contains(&n.id) {
            continue;
        }
        c.node(n)?;
    }
    for (name, value) in o.param_defaults {
        let names: Vec<String> = c.params.iter().map(|p| p.name.clone()).collect();
        let p = c
            .params
            .iter_mut()
            .find(|p| p.name == *name)
            .ok_or_else(|| {
                format!(
                    "--param {name}: the imported script has no such parameter (it has: {})",
                    names.join(", ")
                )
            })?;
        p.value =
            parse_like(&p.value, value).map_err(|e| format!("--param {name}={value}: {e}"))?;
    }
    c.finish()
}

/// A `--param` value, read as the type of the default.
fn parse_like(default: &Value, s: &str) -> Result<Value, String> {
    let kind = match default {
        Value::Bool(_) => text::Kind::Bool,
        Value::Number(n) if n.is_i64() || n.is_u64() => text::Kind::Int,
        Value::Number(_) => text::Kind::Float,
        _ => text::Kind::Str,
    };
    match text::parse_as(s, kind) {
        Ok(Typed::Int(i)) => Ok(Value::from(i)),
        Ok(Typed::Float(f)) => Ok(Value::from(f)),
        Ok(Typed::Bool(b)) => Ok(Value::Bool(b)),
        Ok(Typed::Str(s)) => Ok(Value::String(s)),
        Err(want) => Err(format!("expected {want}")),
    }
}

impl Ctx<'_> {
    fn err(&self, n: &Node, msg: impl std::fmt::Display) -> String {
        format!("{}: node {}: {msg}", self.o.source, n.label())
    }

    fn value<'n>(&self, n: &'n Node, name: &str) -> Result<&'n Value, String> {
        match n.input(name) {
            Some(Input::Value(v)) => Ok(v),
            Some(Input::Link { node, .. }) => Err(self.err(
                n,
                format!("{name} is driven by node {node}, which baton cannot evaluate at import; set it in the workflow"),
            )),
            None => Err(self.err(n, format!("{name} has no value"))),
        }
    }

    fn num(&self, n: &Node, name: &str) -> Result<f64, String> {
        let v = self.value(n, name)?;
        v.as_f64()
            .ok_or_else(|| self.err(n, format!("{name}: expected a number, got {v}")))
    }

    fn int(&self, n: &Node, name: &str) -> Result<i64, String> {
        let v = self.value(n, name)?;
        v.as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|x| x.fract() == 0.0 && x.abs() < 9.0e15)
                    .map(|x| x as i64)
            })
            .ok_or_else(|| self.err(n, format!("{name}: expected an integer, got {v}")))
    }

    /// A seed: ComfyUI's go up to 2^64-1, Rhai integers are i64; baton wraps
    /// negative seeds modulo 2^64 as torch.manual_seed does, so the bits carry over.
    fn seed(&self, n: &Node, name: &str) -> Result<i64, String> {
        match self.value(n, name)?.as_u64() {
            Some(u) => Ok(u as i64),
            None => self.int(n, name),
        }
    }

    fn text(&self, n: &Node, name: &str) -> Result<String, String> {
        let v = self.value(n, name)?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.err(n, format!("{name}: expected a string, got {v}")))
    }

    /// ComfyUI's "enable"/"disable" combos (and plain booleans).
    fn flag(&self, n: &Node, name: &str) -> Result<bool, String> {
        match self.value(n, name)? {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s == "enable" => Ok(true),
            Value::String(s) if s == "disable" => Ok(false),
            v => Err(self.err(
                n,
                format!("{name}: expected \"enable\" or \"disable\", got {v}"),
            )),
        }
    }

    fn input_val(&self, n: &Node, name: &str) -> Result<Option<Val>, String> {
        match n.input(name) {
            None => Ok(None),
            Some(Input::Value(v)) => {
                Err(self.err(n, format!("{name} should be a link, not the value {v}")))
            }
            Some(Input::Link { node, slot }) => match self.vals.get(&(node.clone(), *slot)) {
                Some(v) => Ok(Some(v.clone())),
                None => Err(self.err(
                    n,
                    format!("{name}: node {node} output {slot} has no value baton can use"),
                )),
            },
        }
    }

    fn need(&self, n: &Node, name: &str) -> Result<Val, String> {
        self.input_val(n, name)?
            .ok_or_else(|| self.err(n, format!("{name} is not connected")))
    }

    fn set(&mut self, n: &Node, slot: usize, v: Val) {
        self.vals.insert((n.id.clone(), slot), v);
    }

    fn param(&mut self, name: &str, value: Value, help: &str) -> String {
        match self.params.iter().find(|p| p.name == name) {
            Some(p) if p.value == value => name.to_string(),
            Some(_) => literal(&value),
            None => {
                self.params.push(Param {
                    name: name.into(),
                    value,
                    help: help.into(),
                });
                name.to_string()
            }
        }
    }

    fn file_key(&mut self, key: &str, file: &str, folder: &str) -> String {
        let (expr, note) = (self.o.file)(file, folder);
        self.files.push((key.to_string(), expr, note));
        key.to_string()
    }

    fn model_node(&mut self, n: &Node) -> Result<(), String> {
        let titled = names::from_title(n.title.as_deref(), &n.class);
        match n.class.as_str() {
            "UNETLoader" | "CLIPLoader" | "VAELoader" => {
                let (field, kind, folder) = match n.class.as_str() {
                    "UNETLoader" => ("unet_name", Kind::Dit, "diffusion_models"),
                    "CLIPLoader" => ("clip_name", Kind::TextEncoder, "text_encoders"),
                    _ => ("vae_name", Kind::Vae, "vae"),
                };
                let file = self.text(n, field)?;
                let lower = file.to_ascii_lowercase();
                let base = titled.unwrap_or_else(|| match kind {
                    Kind::Dit if lower.contains("high_noise") || lower.contains("highnoise") => {
                        "high".into()
                    }
                    Kind::Dit if lower.contains("low_noise") || lower.contains("lownoise") => {
                        "low".into()
                    }
                    Kind::Dit => "model".into(),
                    Kind::TextEncoder if lower.contains("umt5") => "umt5".into(),
                    Kind::TextEncoder => "text_encoder".into(),
                    Kind::Vae => "vae".into(),
                });
                let var = self.namer.fresh(&base);
                self.file_key(&var, &file, folder);
                self.handles.push(Handle {
                    var,
                    kind,
                    file,
                    node: n.label(),
                    loras: Vec::new(),
                    in_recipe: false,
                });
                let h = self.handles.len() - 1;
                self.set(
                    n,
                    0,
                    match kind {
                        Kind::Dit => Val::Model {
                            h,
                            shift: None,
                            loras: 0,
                        },
                        Kind::TextEncoder => Val::Clip(h),
                        Kind::Vae => Val::Vae(h),
                    },
                );
            }
            "LoraLoaderModelOnly" => {
                let file = self.text(n, "lora_name")?;
                let strength = self.num(n, "strength_model")?;
                let model = self.need(n, "model")?;
                if let Val::Foreign { var, shift } = model {
                    let key = self.namer.fresh(&format!("{var}_lora"));
                    self.file_key(&key, &file, "loras");
                    let line = format!(
                        "apply_lora({var}, files.{key}, {}); // {}",
                        float(strength),
                        n.label()
                    );
                    self.pending.entry(var.clone()).or_default().push(line);
                    self.set(n, 0, Val::Foreign { var, shift });
                    return Ok(());
                }
                let Val::Model { h, shift, loras } = model else {
                    return Err(self.err(n, "model is not a diffusion model"));
                };
                if loras != self.handles[h].loras.len() {
                    return Err(self.branch_err(n, h));
                }
                let key = self.namer.fresh(&format!("{}_lora", self.handles[h].var));
                self.file_key(&key, &file, "loras");
                self.handles[h].loras.push((key, file, strength, n.label()));
                self.set(
                    n,
                    0,
                    Val::Model {
                        h,
                        shift,
                        loras: loras + 1,
                    },
                );
            }
            _ => {
                // ModelSamplingSD3: the shift travels with the model to the sampler.
                let model = self.need(n, "model")?;
                if let Val::Foreign { var, .. } = model {
                    let shift = self.num(n, "shift")?;
                    self.set(
                        n,
                        0,
                        Val::Foreign {
                            var,
                            shift: Some(shift),
                        },
                    );
                    return Ok(());
                }
                let Val::Model { h, loras, .. } = model else {
                    return Err(self.err(n, "model is not a diffusion model"));
                };
                let shift = self.num(n, "shift")?;
                self.set(
                    n,
                    0,
                    Val::Model {
                        h,
                        shift: Some(shift),
                        loras,
                    },
                );
            }
        }
        Ok(())
    }

    fn branch_err(&self, n: &Node, h: usize) -> String {
        self.err(
            n,
            format!(
                "model {} is used both with and without a LoRA; baton applies LoRAs in place, so load the file twice in the workflow (two loaders)",
                self.handles[h].var
            ),
        )
    }

    /// The model a sampler uses: its handle, script expression and shift.
    fn model(&self, n: &Node) -> Result<(Option<usize>, String, f64), String> {
        match self.need(n, "model")? {
            Val::Model { h, shift, loras } => {
                if loras != self.handles[h].loras.len() {
                    return Err(self.branch_err(n, h));
                }
                Ok((
                    Some(h),
                    self.handles[h].var.clone(),
                    shift.unwrap_or(WAN_DEFAULT_SHIFT),
                ))
            }
            Val::Var(v) => Ok((None, v, WAN_DEFAULT_SHIFT)),
            Val::Foreign { var, shift } => Ok((None, var, shift.unwrap_or(WAN_DEFAULT_SHIFT))),
            _ => Err(self.err(n, "model is not a diffusion model")),
        }
    }

    fn var_of(&self, n: &Node, name: &str) -> Result<Option<String>, String> {
        Ok(match self.input_val(n, name)? {
            None => None,
            Some(Val::Var(v)) | Some(Val::Foreign { var: v, .. }) => Some(v),
            Some(Val::Video { images, .. }) => Some(images),
            Some(_) => {
                return Err(self.err(n, format!("{name}: a model where a tensor was expected")))
            }
        })
    }

    /// A text encoder or VAE input: its handle (None for a placeholder) and variable.
    fn handle_of(&self, n: &Node, name: &str) -> Result<(Option<usize>, String), String> {
        match self.need(n, name)? {
            Val::Clip(h) | Val::Vae(h) => Ok((Some(h), self.handles[h].var.clone())),
            Val::Var(v) | Val::Foreign { var: v, .. } => Ok((None, v)),
            _ => Err(self.err(n, format!("{name}: wrong kind of input"))),
        }
    }

    fn single_consumer(&self, n: &Node, name: &str) -> bool {
        match n.input(name) {
            Some(Input::Link { node, slot }) => {
                self.consumers
                    .get(&(node.clone(), *slot))
                    .map_or(0, Vec::len)
                    == 1
            }
            _ => false,
        }
    }

    fn step(&mut self, n: &Node, lines: Vec<String>, uses: Vec<usize>) {
        self.steps.push(Step {
            label: n.label(),
            lines,
            uses,
        });
    }

    fn header(&self, n: &Node, what: &str) -> String {
        if what.is_empty() {
            format!("// {}", n.label())
        } else {
            format!("// {}: {what}", n.label())
        }
    }

    fn node(&mut self, n: &Node) -> Result<(), String> {
        let class = n.class.as_str();
        match class {
            "UNETLoader"
            | "CLIPLoader"
            | "VAELoader"
            | "LoraLoaderModelOnly"
            | "ModelSamplingSD3" => {}
            "CLIPTextEncode" => self.encode(n)?,
            "EmptyHunyuanLatentVideo" | "Wan22ImageToVideoLatent" => self.latent(n)?,
            "WanImageToVideo" | "WanFirstLastFrameToVideo" => self.image_to_video(n)?,
            "LoadImage" => self.load_image(n)?,
            "KSampler" | "KSamplerAdvanced" => self.sampler(n)?,
            "VAEDecode" => {
                let (h, vae) = self.handle_of(n, "vae")?;
                let latent = self
                    .var_of(n, "samples")?
                    .ok_or_else(|| self.err(n, "samples is not connected"))?;
                let var = self.namer.fresh(
                    &names::from_title(n.title.as_deref(), class)
                        .unwrap_or_else(|| "frames".into()),
                );
                let lines = vec![
                    self.header(n, ""),
                    format!("let {var} = decode({vae}, {latent});"),
                ];
                self.step(n, lines, h.into_iter().collect());
                self.set(n, 0, Val::Var(var));
            }
            "CreateVideo" => {
                let images = self
                    .var_of(n, "images")?
                    .ok_or_else(|| self.err(n, "images is not connected"))?;
                let fps = self.num(n, "fps")?;
                if n.input("audio").is_some() {
                    self.step(n, vec![self.header(n, "its audio input is dropped (baton writes video only)")], vec![]);
                }
                self.set(n, 0, Val::Video { images, fps });
            }
            "SaveVideo" | "SaveAnimatedWEBP" | "SaveImage" => self.save(n)?,
            _ if nodes::is_memory(class) => {
                let through = n.input("value").or_else(|| {
                    n.inputs
                        .iter()
                        .find(|(_, i)| matches!(i, Input::Link { .. }))
                        .map(|(_, i)| i)
                });
                if let Some(Input::Link { node, slot }) = through {
                    if let Some(v) = self.vals.get(&(node.clone(), *slot)).cloned() {
                        self.set(n, 0, v);
                    }
                }
                self.memory_nodes.push(n.label());
                let line = self.header(
                    n,
                    "dropped: baton deletes each model right after its last use instead",
                );
                self.step(n, vec![line], vec![]);
            }
            _ => self.placeholder(n)?,
        }
        Ok(())
    }
}
