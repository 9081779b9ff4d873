//! Order and lifetimes: constants folded, dead branches dropped, the graph
//! put in topological order, and for every model the span of steps during
//! which it must exist. ComfyUI keeps whatever it loaded until memory runs
//! out; a script can delete each model right after its last use, and these
//! spans say where that is and which large models cannot avoid overlapping.

use super::nodes;
use super::workflow::{id_order, Graph, Input, Node};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

/// Replaces every input that reads a Primitive* node or a ComfySwitchNode by
/// the value it evaluates to (a switch becomes the branch it selects).
pub fn fold_constants(g: &mut Graph, source: &str) -> Result<(), String> {
    let by_id: HashMap<String, Node> = g.nodes.iter().map(|n| (n.id.clone(), n.clone())).collect();
    for n in g.nodes.iter_mut().filter(|n| !nodes::is_foldable(&n.class)) {
        let mut kept = Vec::with_capacity(n.inputs.len());
        for (name, inp) in std::mem::take(&mut n.inputs) {
            if let Some(v) = fold(&by_id, inp, source, 0)? {
                kept.push((name, v));
            }
        }
        n.inputs = kept;
    }
    Ok(())
}

fn fold(
    by_id: &HashMap<String, Node>,
    inp: Input,
    source: &str,
    depth: usize,
) -> Result<Option<Input>, String> {
    let Input::Link { node, .. } = &inp else {
        return Ok(Some(inp));
    };
    let Some(n) = by_id.get(node).filter(|n| nodes::is_foldable(&n.class)) else {
        return Ok(Some(inp));
    };
    if depth > 64 {
        return Err(format!(
            "{source}: node {}: constants feed each other in a cycle",
            n.label()
        ));
    }
    let get = |name: &str| n.input(name).cloned();
    if n.class == "ComfySwitchNode" {
        let switch = match get("switch") {
            Some(i) => fold(by_id, i, source, depth + 1)?,
            None => None,
        };
        let on = match switch {
            Some(Input::Value(Value::Bool(b))) => b,
            Some(Input::Value(Value::Number(x))) => x.as_f64() != Some(0.0),
            other => {
                return Err(format!(
                    "{source}: node {}: its switch is not a constant ({other:?}), so the branch cannot be chosen at import",
                    n.label()
                ))
            }
        };
        let branch = if on { "on_true" } else { "on_false" };
        return match get(branch) {
            Some(i) => fold(by_id, i, source, depth + 1),
            None => Err(format!(
                "{source}: node {}: {branch} is not connected",
                n.label()
            )),
        };
    }
    match get("value") {
        Some(i) => fold(by_id, i, source, depth + 1),
        None => Err(format!("{source}: node {}: no value", n.label())),
    }
}

/// Nodes nothing consumes: the outputs, and unknown nodes left dangling
/// (a custom save node is also an output).
fn is_sink(n: &Node, consumed: &BTreeSet<&str>) -> bool {
    nodes::is_output(&n.class)
        || (!consumed.contains(n.id.as_str())
            && !nodes::is_mapped(&n.class)
            && !nodes::is_foldable(&n.class))
}

/// Drops every node no output depends on (the unchosen side of a switch, the
/// folded constants, loaders nothing uses). Returns their labels.
pub fn prune(g: &mut Graph) -> Result<Vec<String>, String> {
    let consumed: BTreeSet<&str> = g
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter())
        .filter_map(|(_, i)| match i {
            Input::Link { node, .. } => Some(node.as_str()),
            Input::Value(_) => None,
        })
        .collect();
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut stack: Vec<String> = g
        .nodes
        .iter()
        .filter(|n| is_sink(n, &consumed))
        .map(|n| n.id.clone())
        .collect();
    if stack.is_empty() {
        return Err(
            "the workflow has no output node (SaveVideo, SaveAnimatedWEBP or SaveImage)".into(),
        );
    }
    let by_id: HashMap<&str, &Node> = g.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    while let Some(id) = stack.pop() {
        if !live.insert(id.clone()) {
            continue;
        }
        if let Some(n) = by_id.get(id.as_str()) {
            for (_, i) in &n.inputs {
                if let Input::Link { node, .. } = i {
                    stack.push(node.clone());
                }
            }
        }
    }
    let dropped = g
        .nodes
        .iter()
        .filter(|n| !live.contains(&n.id))
        .map(Node::label)
        .collect();
    g.nodes.retain(|n| live.contains(&n.id));
    Ok(dropped)
}

/// Kahn's order over the links; among ready nodes, the lowest id first, so
/// the script follows the order the workflow's author built it in.
pub fn topo_order(g: &Graph, source: &str) -> Result<Vec<usize>, String> {
    let index: HashMap<&str, usize> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut indegree = vec![0usize; g.nodes.len()];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        let mut deps = BTreeSet::new();
        for (name, inp) in &n.inputs {
            if let Input::Link { node, .. } = inp {
                let Some(&j) = index.get(node.as_str()) else {
                    return Err(format!(
                        "{source}: node {}: input {name} is linked to node {node}, which the workflow does not contain",
                        n.label()
                    ));
                };
                deps.insert(j);
            }
        }
        indegree[i] = deps.len();
        for j in deps {
            consumers[j].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..g.nodes.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(g.nodes.len());
    while !ready.is_empty() {
        ready.sort_by(|&a, &b| id_order(&g.nodes[b].id, &g.nodes[a].id));
        let i = ready.pop().expect("not empty");
        order.push(i);
        for &c in &consumers[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push(c);
            }
        }
    }
    if order.len() < g.nodes.len() {
        let stuck: Vec<String> = (0..g.nodes.len())
            .filter(|&i| indegree[i] > 0)
            .map(|i| g.nodes[i].label())
            .collect();
        return Err(format!(
            "{source}: the graph has a cycle through {}",
            stuck.join(", ")
        ));
    }
    Ok(order)
}

/// The first and last step that use each handle; None for one never used.
pub fn spans(uses: &[Vec<usize>], handles: usize) -> Vec<Option<(usize, usize)>> {
    let mut s: Vec<Option<(usize, usize)>> = vec![None; handles];
    for (step, hs) in uses.iter().enumerate() {
        for &h in hs {
            s[h] = Some(match s[h] {
                None => (step, step),
                Some((a, _)) => (a, step),
            });
        }
    }
    s
}

/// Pairs of handles (among `large`) whose spans overlap: loaded before the
/// other's last use, however the loads are placed.
pub fn overlapping(spans: &[Option<(usize, usize)>], large: &[usize]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (k, &a) in large.iter().enumerate() {
        for &b in &large[k + 1..] {
            if let (Some((a0, a1)), Some((b0, b1))) = (spans[a], spans[b]) {
                if a0 <= b1 && b0 <= a1 {
                    out.push((a, b));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_first_to_last_use() {
        let uses = vec![vec![0], vec![1], vec![0, 2], vec![2]];
        let s = spans(&uses, 4);
        assert_eq!(s, vec![Some((0, 2)), Some((1, 1)), Some((2, 3)), None]);
        assert_eq!(overlapping(&s, &[0, 1, 2, 3]), vec![(0, 1), (0, 2)]);
        assert!(overlapping(&s, &[1, 2]).is_empty());
    }
}
