//! Where loads and deletes go: each model is loaded right before the step
//! that first uses it and deleted right after the step that last uses it
//! (or, kept resident, all loaded up front and never deleted).

use super::{Ctx, Emitted};
use crate::import::lifetimes;
use crate::import::names::{float, string};

impl Ctx<'_> {
    pub(super) fn finish(self) -> Result<Emitted, String> {
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
