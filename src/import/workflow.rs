//! ComfyUI's two workflow formats read into one graph.
//!
//! The editor saves the UI/LiteGraph form (nodes with positional
//! `widgets_values`, a link table, subgraph definitions, muted and bypassed
//! nodes); the server takes the API/prompt form (`{id: {class_type, inputs}}`
//! with named inputs). Everything downstream works on the API shape, so the UI
//! form is lowered here: widgets get their names from the node table, links
//! become `[node, slot]` references, subgraph instances are inlined (inner ids
//! become `outer:inner`), bypassed nodes pass their inputs through and muted
//! nodes vanish.

use super::nodes;
use serde_json::Value;
use std::collections::HashMap;

/// One input of a node: a literal or the output `slot` of another node.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Link { node: String, slot: usize },
    Value(Value),
}

#[derive(Clone, Debug)]
pub struct Node {
    pub id: String,
    pub class: String,
    pub title: Option<String>,
    pub inputs: Vec<(String, Input)>,
}

impl Node {
    pub fn input(&self, name: &str) -> Option<&Input> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, i)| i)
    }

    /// `#12 KSamplerAdvanced "High noise"`, for messages and comments.
    pub fn label(&self) -> String {
        match &self.title {
            Some(t) if !t.is_empty() => format!("#{} {} \"{t}\"", self.id, self.class),
            _ => format!("#{} {}", self.id, self.class),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Ui,
    Api,
}

#[derive(Debug)]
pub struct Graph {
    pub format: Format,
    pub nodes: Vec<Node>,
    /// Nodes left out while reading (notes, muted, bypassed), for the report.
    pub skipped: Vec<String>,
    /// Subgraph instances that were inlined.
    pub subgraphs: Vec<String>,
}

impl Graph {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// Reads either format; `source` names the file in errors.
pub fn parse(json: &Value, source: &str) -> Result<Graph, String> {
    let mut g = parse_any(json, source)?;
    for n in &mut g.nodes {
        n.class = nodes::canonical(&n.class).to_string();
    }
    Ok(g)
}

fn parse_any(json: &Value, source: &str) -> Result<Graph, String> {
    if json.get("nodes").is_some_and(Value::is_array) {
        return parse_ui(json, source);
    }
    if let Some(obj) = json.as_object() {
        if !obj.is_empty() && obj.values().all(|v| v.get("class_type").is_some()) {
            return parse_api(json, source);
        }
        // The body of a POST /prompt request wraps the prompt.
        if let Some(p) = obj.get("prompt").filter(|p| p.is_object()) {
            return parse_any(p, source);
        }
    }
    Err(format!(
        "{source}: not a ComfyUI workflow: expected the UI form (\"nodes\" and \"links\") \
         or the API form ({{\"id\": {{\"class_type\": ..., \"inputs\": ...}}}})"
    ))
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn parse_api(json: &Value, source: &str) -> Result<Graph, String> {
    let obj = json.as_object().expect("checked by parse");
    let mut nodes = Vec::new();
    for (id, n) in obj {
        let class = n["class_type"]
            .as_str()
            .ok_or_else(|| format!("{source}: node {id}: class_type is not a string"))?;
        let mut inputs = Vec::new();
        if let Some(ins) = n.get("inputs").and_then(Value::as_object) {
            for (name, v) in ins {
                inputs.push((name.clone(), api_input(v)));
            }
        }
        let title = n
            .pointer("/_meta/title")
            .and_then(Value::as_str)
            .filter(|t| *t != class)
            .map(str::to_string);
        nodes.push(Node {
            id: id.clone(),
            class: class.to_string(),
            title,
            inputs,
        });
    }
    nodes.sort_by(|a, b| id_order(&a.id, &b.id));
    Ok(Graph {
        format: Format::Api,
        nodes,
        skipped: Vec::new(),
        subgraphs: Vec::new(),
    })
}

/// Numeric ids in numeric order, the rest after them.
pub fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        _ => a.cmp(b),
    }
}

/// An API input `[node_id, output_index]` is a link; anything else a literal.
fn api_input(v: &Value) -> Input {
    if let Some([src, slot]) = v.as_array().map(Vec::as_slice) {
        if let (Some(node), Some(slot)) = (id_string(src), slot.as_u64()) {
            return Input::Link {
                node,
                slot: slot as usize,
            };
        }
    }
    Input::Value(v.clone())
}

/// A link table entry: origin node and slot, target node and slot.
#[derive(Clone, Copy)]
struct Link {
    origin: i64,
    origin_slot: usize,
    target: i64,
    target_slot: usize,
}

/// The ids LiteGraph gives a subgraph's input and output nodes.
const SUBGRAPH_INPUT: i64 = -10;
const SUBGRAPH_OUTPUT: i64 = -20;
const MAX_SUBGRAPH_DEPTH: usize = 8;

fn parse_links(
    links: Option<&Value>,
    source: &str,
    scope: &str,
) -> Result<HashMap<i64, Link>, String> {
    let mut table = HashMap::new();
    for l in links.and_then(Value::as_array).into_iter().flatten() {
        let int = |v: Option<&Value>| v.and_then(Value::as_i64);
        let (id, link) = if let Some(a) = l.as_array() {
            // [id, origin, origin_slot, target, target_slot, type]
            let g = |i: usize| int(a.get(i));
            match (g(0), g(1), g(2), g(3), g(4)) {
                (Some(id), Some(o), Some(os), Some(t), Some(ts)) => (id, (o, os, t, ts)),
                _ => return Err(format!("{source}: {scope}: malformed link {l}")),
            }
        } else {
            let g = |k: &str| int(l.get(k));
            match (
                g("id"),
                g("origin_id"),
                g("origin_slot"),
                g("target_id"),
                g("target_slot"),
            ) {
                (Some(id), Some(o), Some(os), Some(t), Some(ts)) => (id, (o, os, t, ts)),
                _ => return Err(format!("{source}: {scope}: malformed link {l}")),
            }
        };
        let (o, os, t, ts) = link;
        if os < 0 || ts < 0 {
            return Err(format!("{source}: {scope}: link {id} has a negative slot"));
        }
        table.insert(
            id,
            Link {
                origin: o,
                origin_slot: os as usize,
                target: t,
                target_slot: ts as usize,
            },
        );
    }
    Ok(table)
}

/// The frontend stores `control_after_generate` after a seed widget, but a
/// file written by a tool may leave it out; then the names shift back by one.
fn without_missing_control(names: &[&'static str], values: &[Value]) -> Vec<&'static str> {
    const CONTROLS: &[&str] = &["fixed", "increment", "decrement", "randomize"];
    let mut out = names.to_vec();
    if let Some(k) = names.iter().position(|n| *n == "control_after_generate") {
        let is_control = values
            .get(k)
            .and_then(Value::as_str)
            .is_some_and(|v| CONTROLS.contains(&v));
        if !is_control && values.len() < names.len() {
            out.remove(k);
        }
    }
    out
}

struct Builder<'a> {
    source: &'a str,
    defs: HashMap<String, &'a Value>,
    nodes: Vec<Node>,
    /// Outputs that stand for something else: a bypassed node's input, a
    /// subgraph's inner output, a reroute's input, or nothing (muted).
    aliases: HashMap<(String, usize), Option<Input>>,
    skipped: Vec<String>,
    subgraphs: Vec<String>,
}

fn parse_ui(json: &Value, source: &str) -> Result<Graph, String> {
    let mut defs = HashMap::new();
    for d in json
        .pointer("/definitions/subgraphs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(id) = d.get("id").and_then(Value::as_str) {
            defs.insert(id.to_string(), d);
        }
    }
    let mut b = Builder {
        source,
        defs,
        nodes: Vec::new(),
        aliases: HashMap::new(),
        skipped: Vec::new(),
        subgraphs: Vec::new(),
    };
    b.scope(json, "", &[], &HashMap::new(), 0)?;
    let mut nodes = std::mem::take(&mut b.nodes);
    for n in &mut nodes {
        let mut kept = Vec::with_capacity(n.inputs.len());
        for (name, inp) in std::mem::take(&mut n.inputs) {
            if let Some(i) = b.follow(inp, &n.id)? {
                kept.push((name, i));
            }
        }
        n.inputs = kept;
    }
    Ok(Graph {
        format: Format::Ui,
        nodes,
        skipped: b.skipped,
        subgraphs: b.subgraphs,
    })
}

impl<'a> Builder<'a> {
    /// Follows aliases until a real node's output or a literal; None when the
    /// chain ends at a muted node or an unconnected input.
    fn follow(&self, mut inp: Input, at: &str) -> Result<Option<Input>, String> {
        for _ in 0..256 {
            let key = match &inp {
                Input::Link { node, slot } => (node.clone(), *slot),
                Input::Value(_) => return Ok(Some(inp)),
            };
            match self.aliases.get(&key) {
                None => return Ok(Some(inp)),
                Some(None) => return Ok(None),
                Some(Some(next)) => inp = next.clone(),
            }
        }
        Err(format!(
            "{}: node {at}: its input passes through reroutes/bypassed nodes in a cycle",
            self.source
        ))
    }

    /// Reads one graph level (the top, or a subgraph definition) into
    /// `self.nodes`; returns what feeds the level's outputs (for a subgraph).
    fn scope(
        &mut self,
        graph: &'a Value,
        prefix: &str,
        sub_inputs: &[Option<Input>],
        overrides: &HashMap<(String, String), Value>,
        depth: usize,
    ) -> Result<Vec<Option<Input>>, String> {
        let source = self.source;
        let scope_name = if prefix.is_empty() {
            "top level".to_string()
        } else {
            format!("subgraph instance {}", prefix.trim_end_matches(':'))
        };
        let links = parse_links(graph.get("links"), source, &scope_name)?;
        let origin = |link: i64, at: &str| -> Result<Option<Input>, String> {
            let l = links.get(&link).ok_or_else(|| {
                format!("{source}: node {at} names link {link}, which is not in the {scope_name}'s link table")
            })?;
            Ok(if l.origin == SUBGRAPH_INPUT {
                sub_inputs.get(l.origin_slot).cloned().flatten()
            } else {
                Some(Input::Link {
                    node: format!("{prefix}{}", l.origin),
                    slot: l.origin_slot,
                })
            })
        };
        let empty = Vec::new();
        for n in graph
            .get("nodes")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
        {
            let local = n
                .get("id")
                .and_then(id_string)
                .ok_or_else(|| format!("{source}: {scope_name}: a node without an id"))?;
            let id = format!("{prefix}{local}");
            let class = n
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{source}: node {id}: no \"type\""))?
                .to_string();
            let title = n.get("title").and_then(Value::as_str).map(str::to_string);
            let mode = n.get("mode").and_then(Value::as_i64).unwrap_or(0);
            let label = match &title {
                Some(t) => format!("#{id} {class} \"{t}\""),
                None => format!("#{id} {class}"),
            };
            if nodes::is_note(&class) {
                self.skipped.push(format!("{label}: a note"));
                continue;
            }
            let in_list = n.get("inputs").and_then(Value::as_array).unwrap_or(&empty);
            let out_list = n.get("outputs").and_then(Value::as_array).unwrap_or(&empty);
            if mode == 2 {
                self.skipped.push(format!("{label}: muted"));
                for k in 0..out_list.len().max(1) {
                    self.aliases.insert((id.clone(), k), None);
                }
                continue;
            }
            // Linked inputs, named by the widget they drive where they drive one.
            let mut linked: Vec<(String, Option<Input>, Option<String>)> = Vec::new();
            for inp in in_list {
                let widget = inp.pointer("/widget/name").and_then(Value::as_str);
                let name = widget
                    .or_else(|| inp.get("name").and_then(Value::as_str))
                    .unwrap_or("")
                    .to_string();
                let ty = inp.get("type").and_then(Value::as_str).map(str::to_string);
                if let Some(link) = inp.get("link").and_then(Value::as_i64) {
                    let from = origin(link, &id)?;
                    let from_sub = links.get(&link).is_some_and(|l| l.origin == SUBGRAPH_INPUT);
                    if from.is_none() && from_sub && widget.is_some() {
                        // A widget linked to a subgraph input that brings no
                        // value (the instance neither links nor promotes it):
                        // ComfyUI runs the inner widget's own value, so it stays.
                        continue;
                    }
                    linked.push((name, from, ty));
                }
            }
            if mode == 4 {
                // Bypassed: each output passes on the first input of its type.
                self.skipped.push(format!("{label}: bypassed"));
                for (k, out) in out_list.iter().enumerate() {
                    let ty = out.get("type").and_then(Value::as_str);
                    let through = linked
                        .iter()
                        .find(|(_, _, t)| t.as_deref().is_some() && t.as_deref() == ty)
                        .and_then(|(_, i, _)| i.clone());
                    self.aliases.insert((id.clone(), k), through);
                }
                continue;
            }
            let widgets = n.get("widgets_values");
            if class == "Reroute" {
                let through = linked.first().and_then(|(_, i, _)| i.clone());
                self.aliases.insert((id.clone(), 0), through);
                continue;
            }
            if class == "PrimitiveNode" {
                // The frontend-only primitive: its value is its first widget.
                let v = widgets.and_then(|w| w.get(0)).cloned();
                self.aliases.insert((id.clone(), 0), v.map(Input::Value));
                continue;
            }
            if let Some(def) = self.defs.get(&class).copied() {
                let outs = self.instance(n, def, &id, &linked, depth)?;
                for (k, o) in outs.into_iter().enumerate() {
                    self.aliases.insert((id.clone(), k), o);
                }
                self.subgraphs.push(format!(
                    "{label} (\"{}\")",
                    def.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("subgraph")
                ));
                continue;
            }
            let mut inputs: Vec<(String, Input)> = Vec::new();
            let names = nodes::widget_names(&class);
            match widgets {
                Some(Value::Array(values)) => {
                    let names = names.map(|ns| without_missing_control(ns, values));
                    for (i, v) in values.iter().enumerate() {
                        let name = match &names {
                            Some(ns) => match ns.get(i) {
                                Some(n) => n.to_string(),
                                None => continue,
                            },
                            None => format!("widget_{i}"),
                        };
                        inputs.push((name, Input::Value(v.clone())));
                    }
                }
                Some(Value::Object(m)) => {
                    for (k, v) in m {
                        inputs.push((k.clone(), Input::Value(v.clone())));
                    }
                }
                _ => {}
            }
            for ((node, widget), v) in overrides {
                if *node == local {
                    inputs.retain(|(n, _)| n != widget);
                    inputs.push((widget.clone(), Input::Value(v.clone())));
                }
            }
            for (name, inp, _) in linked {
                // A linked widget's stored value is stale: the link wins.
                inputs.retain(|(n, _)| *n != name);
                if let Some(i) = inp {
                    inputs.push((name, i));
                }
            }
            self.nodes.push(Node {
                id,
                class,
                title,
                inputs,
            });
        }
        let mut outputs = Vec::new();
        for (id, l) in &links {
            if l.target == SUBGRAPH_OUTPUT {
                if outputs.len() <= l.target_slot {
                    outputs.resize(l.target_slot + 1, None);
                }
                outputs[l.target_slot] = origin(*id, "subgraph output")?;
            }
        }
        Ok(outputs)
    }

    /// Inlines one subgraph instance: its inputs come from its links, else
    /// from the widgets it promotes (`properties.proxyWidgets`).
    fn instance(
        &mut self,
        n: &Value,
        def: &'a Value,
        id: &str,
        linked: &[(String, Option<Input>, Option<String>)],
        depth: usize,
    ) -> Result<Vec<Option<Input>>, String> {
        if depth >= MAX_SUBGRAPH_DEPTH {
            return Err(format!(
                "{}: node {id}: subgraphs nested more than {MAX_SUBGRAPH_DEPTH} deep (a subgraph that contains itself?)",
                self.source
            ));
        }
        let values = n
            .get("widgets_values")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let proxies: Vec<(String, String)> = n
            .pointer("/properties/proxyWidgets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let a = p.as_array()?;
                Some((id_string(a.first()?)?, a.get(1)?.as_str()?.to_string()))
            })
            .collect();
        let promoted = |node: &str, widget: &str| {
            proxies
                .iter()
                .position(|(n, w)| n == node && w == widget)
                .and_then(|j| values.get(j).cloned())
        };
        let mut sub_inputs = Vec::new();
        for inp in def
            .get("inputs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = inp.get("name").and_then(Value::as_str).unwrap_or("");
            let from_link = linked.iter().find(|(n, _, _)| n == name);
            sub_inputs.push(match from_link {
                Some((_, i, _)) => i.clone(),
                None => promoted("-1", name).map(Input::Value),
            });
        }
        let mut overrides = HashMap::new();
        for (node, widget) in &proxies {
            if node != "-1" {
                if let Some(v) = promoted(node, widget) {
                    overrides.insert((node.clone(), widget.clone()), v);
                }
            }
        }
        self.scope(def, &format!("{id}:"), &sub_inputs, &overrides, depth + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Bypassed nodes pass their input of the same type on, reroutes are
    /// transparent, the frontend's PrimitiveNode is its value, a muted node
    /// leaves its consumers' inputs unconnected, and a linked widget's stale
    /// stored value loses to the link.
    #[test]
    fn ui_graph_lowers_to_named_inputs() {
        let out = |t: &str| json!([{ "name": t, "type": t }]);
        let wf = json!({
            "nodes": [
                { "id": 1, "type": "UNETLoader", "widgets_values": ["a.safetensors", "default"], "outputs": out("MODEL") },
                { "id": 2, "type": "LoraLoaderModelOnly", "mode": 4, "widgets_values": ["l.safetensors", 1.0],
                  "inputs": [{ "name": "model", "type": "MODEL", "link": 1 }], "outputs": out("MODEL") },
                { "id": 3, "type": "Reroute", "inputs": [{ "name": "", "type": "*", "link": 2 }], "outputs": out("MODEL") },
                { "id": 4, "type": "ModelSamplingSD3", "widgets_values": [5.0],
                  "inputs": [{ "name": "model", "type": "MODEL", "link": 3 }], "outputs": out("MODEL") },
                { "id": 5, "type": "PrimitiveNode", "widgets_values": [7, "fixed"], "outputs": out("INT") },
                { "id": 6, "type": "KSampler", "widgets_values": [1, "fixed", 20, 3.5, "euler", "simple", 1.0],
                  "inputs": [{ "name": "model", "type": "MODEL", "link": 4 },
                             { "name": "steps", "type": "INT", "link": 5, "widget": { "name": "steps" } }] },
                { "id": 7, "type": "CLIPLoader", "mode": 2, "widgets_values": ["t.safetensors", "wan", "default"], "outputs": out("CLIP") },
                { "id": 8, "type": "CLIPTextEncode", "widgets_values": ["hi"], "inputs": [{ "name": "clip", "type": "CLIP", "link": 6 }] },
                { "id": 9, "type": "MarkdownNote", "widgets_values": ["notes"] }
            ],
            "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 0, "MODEL"],
                      [4, 4, 0, 6, 0, "MODEL"], [5, 5, 0, 6, 1, "INT"], [6, 7, 0, 8, 0, "CLIP"]]
        });
        let g = parse(&wf, "wf.json").unwrap();
        let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["1", "4", "6", "8"]);
        let link = |node: &str| Input::Link {
            node: node.into(),
            slot: 0,
        };
        assert_eq!(g.node("4").unwrap().input("model"), Some(&link("1")));
        let ks = g.node("6").unwrap();
        assert_eq!(ks.input("steps"), Some(&Input::Value(json!(7))));
        assert_eq!(
            ks.input("sampler_name"),
            Some(&Input::Value(json!("euler")))
        );
        assert_eq!(ks.input("model"), Some(&link("4")));
        assert_eq!(g.node("8").unwrap().input("clip"), None);
        assert_eq!(g.skipped.len(), 3, "{:?}", g.skipped);
    }

    #[test]
    fn a_missing_control_after_generate_does_not_shift_the_widgets() {
        let names = nodes::widget_names("KSampler").unwrap();
        let stored = [
            json!(5),
            json!(20),
            json!(3.5),
            json!("euler"),
            json!("simple"),
            json!(1.0),
        ];
        let got = without_missing_control(names, &stored);
        assert_eq!(got[1], "steps");
        let full = [
            json!(5),
            json!("fixed"),
            json!(20),
            json!(3.5),
            json!("euler"),
            json!("simple"),
            json!(1.0),
        ];
        assert_eq!(without_missing_control(names, &full), names);
    }

    #[test]
    fn api_links_and_literals() {
        let g = parse(&json!({ "3": { "class_type": "VAEDecode", "inputs": { "samples": ["10", 0], "vae": [7, 1] } },
                               "10": { "class_type": "X", "inputs": { "list": [1, 2, 3] } } }), "p.json")
            .unwrap();
        assert_eq!(g.format, Format::Api);
        let n = g.node("3").unwrap();
        assert_eq!(
            n.input("vae"),
            Some(&Input::Link {
                node: "7".into(),
                slot: 1
            })
        );
        assert_eq!(
            g.node("10").unwrap().input("list"),
            Some(&Input::Value(json!([1, 2, 3])))
        );
    }
}
