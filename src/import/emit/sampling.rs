//! Sampler nodes: KSampler / KSamplerAdvanced settings as the script runs
//! them, and the two-expert pattern that goes through `wan::two_stage`.

use super::{Ctx, Kind, SamplerSettings, Step, Val};
use crate::import::names::{float, float32, string};
use crate::import::workflow::{Graph, Input, Node};

/// ComfyUI's default shift for Wan models when no ModelSamplingSD3 is present.
pub(super) const WAN_DEFAULT_SHIFT: f64 = 8.0;

impl Ctx<'_> {
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

    /// The `sample` options the variables `vars` carry (see `Ctx::carried`).
    fn carried_by(&self, vars: &[&str]) -> Vec<String> {
        vars.iter()
            .filter_map(|v| self.carried.get(*v).cloned())
            .collect()
    }

    pub(super) fn sampler(&mut self, n: &Node) -> Result<(), String> {
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
        o.extend(self.carried_by(&[&pos, &latent_in]));
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
        o.push(format!("shift: {}", float32(s.shift)));
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
        o.extend(self.carried_by(&[pos, latent_in]));
        o.extend([
            format!("steps: {steps}"),
            format!("split: {split}"),
            format!("cfg_high: {}", float(sa.cfg)),
            format!("cfg_low: {}", float(sb.cfg)),
            format!("shift: {}", float32(sa.shift)),
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
