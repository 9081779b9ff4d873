//! The script text: each mapped node becomes the primitive calls a person
//! would write, models are loaded right before their first use and deleted
//! right after their last, and the two-expert pattern goes through the
//! stdlib recipe that already does exactly that.

use super::lifetimes;
use super::names::{self, comment_text, float, literal, string, Namer};
use super::nodes;
use super::workflow::{Graph, Input, Node};
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
    "files",
    "wan",
];

/// ComfyUI's default shift for Wan models when no ModelSamplingSD3 is present.
const WAN_DEFAULT_SHIFT: f64 = 8.0;

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
    match default {
        Value::Bool(_) => s
            .parse::<bool>()
            .map(Value::Bool)
            .map_err(|_| "expected true or false".into()),
        Value::Number(n) if n.is_i64() || n.is_u64() => s
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| "expected an integer".into()),
        Value::Number(_) => s
            .parse::<f64>()
            .map(Value::from)
            .map_err(|_| "expected a number".into()),
        _ => Ok(Value::String(s.to_string())),
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
            "WanImageToVideo" => self.image_to_video(n)?,
            "LoadImage" => {
                let file = self.text(n, "image")?;
                let p = self.param(
                    "image",
                    Value::String(file),
                    "Start image (read under the model roots or the script's folder)",
                );
                let var = self.namer.fresh(
                    &names::from_title(n.title.as_deref(), class)
                        .unwrap_or_else(|| "start_image".into()),
                );
                let lines = vec![self.header(n, ""), format!("let {var} = load_image({p});")];
                self.step(n, lines, vec![]);
                self.set(n, 0, Val::Var(var));
            }
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

    fn placeholder(&mut self, n: &Node) -> Result<(), String> {
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

    fn encode(&mut self, n: &Node) -> Result<(), String> {
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

    fn latent(&mut self, n: &Node) -> Result<(), String> {
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
            if n.input("start_image").is_some() {
                let (vh, _) = self.handle_of(n, "vae")?;
                uses.extend(vh);
                lines.push(self.header(
                    n,
                    "the start image is encoded into the first latent frame by ComfyUI",
                ));
                lines.push(format!(
                    "throw {};",
                    string(&format!(
                        "node {}: Wan 2.2 TI2V image conditioning (start image into the latent) is not in baton yet; bypass the LoadImage node for text-to-video",
                        n.id
                    ))
                ));
            } else {
                lines.push(self.header(n, "text-to-video (no start image)"));
            }
            lines.push("// The Wan 2.2 VAE compresses 16x into 48 channels; at baton's 8x, half the size gives that latent.".into());
            lines.push(format!(
                "let {var} = empty_latent(#{{ width: {w} / 2, height: {h} / 2, frames: {len}, channels: 48{batch} }});"
            ));
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

    fn image_to_video(&mut self, n: &Node) -> Result<(), String> {
        let (w, h, len, batch) = self.size(n)?;
        let pos = self
            .var_of(n, "positive")?
            .ok_or_else(|| self.err(n, "positive is not connected"))?;
        let neg = self.var_of(n, "negative")?;
        let mut uses = Vec::new();
        if let Some(Val::Vae(vh)) = self.input_val(n, "vae")? {
            uses.push(vh);
        }
        let image = self.var_of(n, "start_image")?;
        let var = self.namer.fresh("latent");
        let batch = if batch == 1 {
            String::new()
        } else {
            format!(", batch: {batch}")
        };
        let mut lines = vec![
            self.header(n, "image-to-video conditioning"),
            "// ComfyUI encodes the start image with the VAE and hands its latent and a mask to the".into(),
            "// DiT beside the noise; baton's Wan DiT has no such input yet, so this stops here.".into(),
        ];
        if let Some(img) = &image {
            lines.push(format!("// start image: {img}"));
        }
        lines.push(format!(
            "throw {};",
            string(&format!("node {}: WanImageToVideo (image-to-video conditioning) is not supported by baton yet", n.id))
        ));
        lines.push(format!(
            "let {var} = empty_latent(#{{ width: {w}, height: {h}, frames: {len}{batch} }});"
        ));
        self.step(n, lines, uses);
        self.set(n, 0, Val::Var(pos));
        if let Some(neg) = neg {
            self.set(n, 1, Val::Var(neg));
        }
        self.set(n, 2, Val::Var(var));
        Ok(())
    }

    /// The settings of a KSampler / KSamplerAdvanced node.
    fn settings(&self, n: &Node) -> Result<SamplerSettings, String> {
        let (_, model, shift) = self.model(n)?;
        let steps = self.int(n, "steps")?;
        let cfg = self.num(n, "cfg")?;
        let sampler = self.text(n, "sampler_name")?;
        let scheduler = self.text(n, "scheduler")?;
        if n.class == "KSampler" {
            let denoise = self.num(n, "denoise")?;
            if !(denoise > 0.0 && denoise <= 1.0) {
                return Err(self.err(n, format!("denoise must be in (0, 1], got {denoise}")));
            }
            // ComfyUI: with denoise < 1, the schedule is computed for
            // steps/denoise steps and the last `steps` of it are run.
            let total = if denoise < 1.0 {
                (steps as f64 / denoise).floor() as i64
            } else {
                steps
            };
            return Ok(SamplerSettings {
                node: n.label(),
                model,
                steps: total,
                start: total - steps,
                end: None,
                cfg,
                sampler,
                scheduler,
                shift,
                seed: Some(self.seed(n, "seed")?),
                add_noise: true,
                leftover_noise: false,
            });
        }
        let add_noise = self.flag(n, "add_noise")?;
        let start = self.int(n, "start_at_step")?;
        let end = self.int(n, "end_at_step")?;
        Ok(SamplerSettings {
            node: n.label(),
            model,
            steps,
            start,
            end: (end < steps).then_some(end),
            cfg,
            sampler,
            scheduler,
            shift,
            seed: if add_noise {
                Some(self.seed(n, "noise_seed")?)
            } else {
                None
            },
            add_noise,
            leftover_noise: self.flag(n, "return_with_leftover_noise")?,
        })
    }

    /// The second pass of the two-expert pattern starting at `n`, if the
    /// graph is exactly that: high expert 0..k with leftover noise, feeding
    /// a low expert k..end without new noise, same schedule and prompts, and
    /// each expert used by nothing else.
    fn two_stage_partner<'g>(
        &self,
        n: &Node,
        g: &'g Graph,
    ) -> Option<(&'g Node, SamplerSettings, SamplerSettings)> {
        if self.o.keep_resident || n.class != "KSamplerAdvanced" {
            return None;
        }
        let cons = self.consumers.get(&(n.id.clone(), 0))?;
        let [(next, input)] = cons.as_slice() else {
            return None;
        };
        let b = g
            .node(next)
            .filter(|b| b.class == "KSamplerAdvanced" && input == "latent_image")?;
        let (sa, sb) = (self.settings(n).ok()?, self.settings(b).ok()?);
        let k = sa.end?;
        let pattern = sa.add_noise
            && sa.leftover_noise
            && sa.start == 0
            && k > 0
            && !sb.add_noise
            && !sb.leftover_noise
            && sb.start == k
            && sb.end.is_none()
            && sa.steps == sb.steps
            && sa.sampler == sb.sampler
            && sa.scheduler == sb.scheduler
            && (sa.shift - sb.shift).abs() <= 1e-6 * sa.shift.abs().max(1.0)
            && n.input("positive") == b.input("positive")
            && n.input("negative") == b.input("negative");
        if !pattern {
            return None;
        }
        let (ha, _, _) = self.model(n).ok()?;
        let (hb, _, _) = self.model(b).ok()?;
        let (ha, hb) = (ha?, hb?);
        let only_here = |h: usize, node: &Node| {
            self.handles[h].loras.len() <= 1
                && self.handles[h].kind == Kind::Dit
                && self
                    .g
                    .nodes
                    .iter()
                    .filter(|m| m.class != "LoraLoaderModelOnly" && m.class != "ModelSamplingSD3")
                    .all(|m| {
                        m.id == node.id || !m.inputs.iter().any(|(_, i)| self.links_to_handle(i, h))
                    })
        };
        (ha != hb && only_here(ha, n) && only_here(hb, b)).then_some((b, sa, sb))
    }

    fn links_to_handle(&self, i: &Input, h: usize) -> bool {
        let Input::Link { node, slot } = i else {
            return false;
        };
        matches!(self.vals.get(&(node.clone(), *slot)), Some(Val::Model { h: x, .. }) if *x == h)
    }

    fn sampler(&mut self, n: &Node) -> Result<(), String> {
        let latent_in = self
            .var_of(n, "latent_image")?
            .ok_or_else(|| self.err(n, "latent_image is not connected"))?;
        let pos = self
            .var_of(n, "positive")?
            .ok_or_else(|| self.err(n, "positive is not connected"))?;
        let neg = self.var_of(n, "negative")?;
        let out = if self.single_consumer(n, "latent_image") {
            latent_in.clone()
        } else {
            self.namer.fresh("latent")
        };
        let decl = if out == latent_in { "" } else { "let " };
        if let Some((b, sa, sb)) = self.two_stage_partner(n, self.g) {
            return self.two_stage(n, b, sa, sb, &latent_in, &out, decl, &pos, neg.as_deref());
        }
        let s = self.settings(n)?;
        let (h, model, _) = self.model(n)?;
        let steps = self.param("steps", s.steps.into(), "Total sampling steps");
        let mut o = vec![format!("positive: {pos}")];
        if let Some(neg) = &neg {
            o.push(format!("negative: {neg}"));
        }
        o.push(format!("steps: {steps}"));
        let split = |c: &mut Self, k: i64| {
            c.param("split", k.into(), "Step where the second pass takes over")
        };
        if s.start > 0 {
            let e = if n.class == "KSampler" {
                s.start.to_string()
            } else {
                split(self, s.start)
            };
            o.push(format!("start: {e}"));
        }
        if let Some(end) = s.end {
            o.push(format!("end: {}", split(self, end)));
        }
        o.push(format!("cfg: {}", float(s.cfg)));
        o.push(format!("sampler: {}", string(&s.sampler)));
        o.push(format!("scheduler: {}", string(&s.scheduler)));
        o.push(format!("shift: {}", float(s.shift)));
        if let Some(seed) = s.seed {
            o.push(format!(
                "seed: {}",
                self.param("seed", seed.into(), "Noise seed")
            ));
        }
        o.push(format!("add_noise: {}", s.add_noise));
        if s.leftover_noise {
            o.push("leftover_noise: true".into());
        }
        let what = match (s.start, s.end) {
            (0, None) => format!("{} steps", s.steps),
            (a, None) => format!("steps {a}..{} of {}", s.steps, s.steps),
            (a, Some(b)) => format!("steps {a}..{b} of {}", s.steps),
        };
        let lines = vec![
            self.header(n, &format!("{what} with {model}")),
            format!(
                "{decl}{out} = sample({model}, {latent_in}, #{{{}}});",
                wrap(&o, 4)
            ),
        ];
        self.step(n, lines, h.into_iter().collect());
        self.samplers.push(s);
        self.set(n, 0, Val::Var(out));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn two_stage(
        &mut self,
        a: &Node,
        b: &Node,
        sa: SamplerSettings,
        sb: SamplerSettings,
        latent_in: &str,
        out: &str,
        decl: &str,
        pos: &str,
        neg: Option<&str>,
    ) -> Result<(), String> {
        let (ha, _, _) = self.model(a)?;
        let (hb, _, _) = self.model(b)?;
        let (ha, hb) = (ha.expect("checked"), hb.expect("checked"));
        let steps = self.param("steps", sa.steps.into(), "Total sampling steps");
        let split = self.param(
            "split",
            sa.end.expect("checked").into(),
            "Step where the low-noise expert takes over",
        );
        let seed = self.param("seed", sa.seed.unwrap_or(0).into(), "Noise seed");
        let mut o = vec![format!("positive: {pos}")];
        if let Some(neg) = neg {
            o.push(format!("negative: {neg}"));
        }
        o.extend([
            format!("steps: {steps}"),
            format!("split: {split}"),
            format!("cfg_high: {}", float(sa.cfg)),
            format!("cfg_low: {}", float(sb.cfg)),
            format!("shift: {}", float(sa.shift)),
            format!("seed: {seed}"),
            format!("sampler: {}", string(&sa.sampler)),
            format!("scheduler: {}", string(&sa.scheduler)),
        ]);
        for (h, key) in [(ha, "lora_high"), (hb, "lora_low")] {
            if let Some((k, _, strength, _)) = self.handles[h].loras.first() {
                o.push(format!("{key}: [files.{k}, {}]", float(*strength)));
            }
        }
        let (va, vb) = (self.handles[ha].var.clone(), self.handles[hb].var.clone());
        let lines = vec![
            format!("// {} and {}: the two-expert pattern.", a.label(), b.label()),
            format!("// wan::two_stage loads {va}, samples steps 0..split, deletes it, then loads {vb} for the rest."),
            format!(
                "{decl}{out} = wan::two_stage(files.{va}, files.{vb}, {latent_in}, #{{{}}});",
                wrap(&o, 4)
            ),
        ];
        self.handles[ha].in_recipe = true;
        self.handles[hb].in_recipe = true;
        // The recipe runs the experts one after the other: two steps, so
        // their spans do not overlap.
        self.steps.push(Step {
            label: a.label(),
            lines,
            uses: vec![ha],
        });
        self.steps.push(Step {
            label: b.label(),
            lines: Vec::new(),
            uses: vec![hb],
        });
        self.samplers.push(sa);
        self.samplers.push(sb);
        self.skip.push(b.id.clone());
        self.set(b, 0, Val::Var(out.to_string()));
        self.two_stage = true;
        Ok(())
    }

    fn save(&mut self, n: &Node) -> Result<(), String> {
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

    fn finish(self) -> Result<Emitted, String> {
        let uses: Vec<Vec<usize>> = self.steps.iter().map(|s| s.uses.clone()).collect();
        let spans = lifetimes::spans(&uses, self.handles.len());
        let large: Vec<usize> = (0..self.handles.len())
            .filter(|&h| self.handles[h].kind.large())
            .collect();
        let coexisting = lifetimes::overlapping(&spans, &large);
        let mut body = Vec::new();
        let mut order = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            if !body.is_empty() && !step.lines.is_empty() {
                body.push(String::new());
            }
            for (h, hd) in self.handles.iter().enumerate() {
                // Kept resident, everything loads up front as the graph's
                // loaders run first in ComfyUI; a partial load then takes what
                // is left, so nothing could load after it.
                let load_at = if self.o.keep_resident {
                    spans[h].map(|_| 0)
                } else {
                    spans[h].map(|s| s.0)
                };
                if load_at != Some(i) {
                    continue;
                }
                if hd.in_recipe {
                    order.push(format!("load {} (in wan::two_stage)", hd.var));
                    continue;
                }
                for &(a, b) in &coexisting {
                    let other = if a == h {
                        b
                    } else if b == h {
                        a
                    } else {
                        continue;
                    };
                    if spans[other].is_some_and(|s| s.0 < i) {
                        body.push(format!(
                            "// {} and {} must both be resident here: the graph uses {} again after {} is needed.",
                            self.handles[other].var, hd.var, self.handles[other].var, hd.var
                        ));
                    }
                }
                body.push(format!("// {} ({})", hd.node, hd.file));
                body.push(format!(
                    "let {0} = load_model(files.{0}, #{{ name: {1} }});",
                    hd.var,
                    string(&hd.var)
                ));
                for (key, _, strength, node) in &hd.loras {
                    body.push(format!(
                        "apply_lora({}, files.{key}, {}); // {node}",
                        hd.var,
                        float(*strength)
                    ));
                }
                order.push(format!("load {}", hd.var));
            }
            body.extend(step.lines.iter().cloned());
            for (h, hd) in self.handles.iter().enumerate() {
                if spans[h].map(|s| s.1) != Some(i) {
                    continue;
                }
                if hd.in_recipe {
                    order.push(format!("delete {} (in wan::two_stage)", hd.var));
                } else if !self.o.keep_resident {
                    body.push(format!("delete_model({}); // last use", hd.var));
                    order.push(format!("delete {}", hd.var));
                }
            }
        }
        let mut files = self.files;
        let first_use = |key: &str| {
            self.handles
                .iter()
                .position(|h| h.var == key || h.loras.iter().any(|l| l.0 == key))
                .and_then(|h| spans[h].map(|s| s.0))
                .unwrap_or(usize::MAX)
        };
        files.sort_by_key(|f| first_use(&f.0));
        Ok(Emitted {
            body: body.join("\n"),
            files,
            params: self.params,
            spans,
            step_labels: self.steps.iter().map(|s| s.label.clone()).collect(),
            handles: self.handles,
            coexisting,
            order,
            samplers: self.samplers,
            memory_nodes: self.memory_nodes,
            two_stage: self.two_stage,
            unsupported: self.unsupported,
        })
    }
}

/// The inside of `#{ }`: one indented block of options, lines kept readable.
fn wrap(items: &[String], indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut lines: Vec<String> = vec![String::new()];
    for (k, it) in items.iter().enumerate() {
        let cur = lines.last_mut().expect("one line");
        if !cur.is_empty() && cur.len() + it.len() > 76 {
            lines.push(String::new());
        }
        let cur = lines.last_mut().expect("one line");
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(it);
        if k + 1 < items.len() {
            cur.push(',');
        }
    }
    let body: Vec<String> = lines.iter().map(|l| format!("{pad}{l}")).collect();
    format!("\n{}\n", body.join("\n"))
}
