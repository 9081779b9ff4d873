//! The ComfyUI sampling fixtures (tests/fixtures/comfy, made by ComfyUI's own
//! nodes; its README gives every formula): JSON/tensor helpers, the analytic
//! denoiser that stands in for the network, and that denoiser driven
//! through the product's KSamplerAdvanced pass.

use baton::sampling::ksampler::{Call, Cond, Denoiser, KSampler, PassIo, Sampler, Scheduler};
use baton::sampling::{guidance, noise, samplers, sigmas};
use candle_core::{Device, Result, Tensor};
use serde_json::Value;
use std::collections::HashMap;

// ---------------------------------------------------------------------------
// fixture helpers

pub fn load_json(rel: &str) -> Value {
    let path = super::fixture(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// A JSON list of f32 values: from the `<field>_bits` hex strings when present (exact),
/// otherwise the decimal renderings parsed as f64 and cast to f32 (also exact).
pub fn f32_list(obj: &Value, field: &str) -> Vec<f32> {
    if let Some(bits) = obj.get(format!("{field}_bits")).and_then(Value::as_array) {
        return bits
            .iter()
            .map(|b| {
                let s = b.as_str().expect("bits string");
                f32::from_bits(u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap())
            })
            .collect();
    }
    obj[field]
        .as_array()
        .unwrap_or_else(|| panic!("field {field} missing"))
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

pub fn vec_of(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Elements whose values differ (`==`, so +0 and −0 count as equal).
pub fn count_diff(a: &Tensor, b: &Tensor) -> usize {
    assert_eq!(a.dims(), b.dims());
    vec_of(a)
        .iter()
        .zip(vec_of(b))
        .filter(|(x, y)| **x != *y)
        .count()
}

pub fn assert_bit_exact(actual: &Tensor, expected: &Tensor, what: &str) {
    let n = count_diff(actual, expected);
    assert!(
        n == 0,
        "{what}: {n} of {} elements differ, max abs {:.3e}",
        expected.elem_count(),
        super::max_abs_diff(actual, expected)
    );
}

pub fn assert_max_abs(actual: &Tensor, expected: &Tensor, tol: f64, what: &str) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    let d = super::max_abs_diff(actual, expected);
    assert!(d <= tol, "{what}: max abs {d:.3e} > {tol:.1e}");
}

pub fn same_list(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

// ---------------------------------------------------------------------------
// the analytic denoiser (README §4) and Wan21 latent processing (README §3.5/§3.7)

pub struct Analytic {
    pub a: Vec<f64>,       // [16, 16], row o, column c
    pub b: Vec<f64>,       // [16]
    pub ctx_pos: Vec<f64>, // [16]
    pub ctx_neg: Vec<f64>, // [16]
    pub mean: Tensor,      // [1, 16, 1, 1, 1]
    pub std: Tensor,       // [1, 16, 1, 1, 1]
}

pub fn f64s(t: &Tensor) -> Vec<f64> {
    vec_of(t).into_iter().map(f64::from).collect()
}

impl Analytic {
    pub fn load(fx: &HashMap<String, Tensor>) -> Self {
        let chan = |k: &str| fx[k].reshape((1, 16, 1, 1, 1)).unwrap();
        Self {
            a: f64s(&fx["analytic.A"]),
            b: f64s(&fx["analytic.b"]),
            ctx_pos: f64s(&fx["analytic.context_pos"]),
            ctx_neg: f64s(&fx["analytic.context_neg"]),
            mean: chan("wan21.latents_mean"),
            std: chan("wan21.latents_std"),
        }
    }

    /// v[b,o,p] = f32(tanh(Σ_c A[o,c]·x[b,c,p] + b[o]·σ + ctx[o])), accumulated in f64 in
    /// exactly that order (Rust never contracts `acc + a*b` into an FMA).
    pub fn velocity(&self, x: &Tensor, sigma: f32, ctx: &[f64]) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (batch, chans) = (dims[0], dims[1]);
        assert_eq!(chans, 16);
        let spatial: usize = dims[2..].iter().product();
        let xs = vec_of(x);
        let s = sigma as f64;
        let mut out = vec![0f32; xs.len()];
        for bi in 0..batch {
            let base = bi * chans * spatial;
            for o in 0..16 {
                for p in 0..spatial {
                    let mut acc = 0f64;
                    for c in 0..16 {
                        acc += self.a[o * 16 + c] * xs[base + c * spatial + p] as f64;
                    }
                    acc += self.b[o] * s;
                    acc += ctx[o];
                    out[base + o * spatial + p] = acc.tanh() as f32;
                }
            }
        }
        Tensor::from_vec(out, dims, x.device())
    }

    /// ComfyUI's `calculate_denoised`: x − v·σ in f32 (the runtime's form).
    pub fn denoised(&self, x: &Tensor, sigma: f32, ctx: &[f64]) -> Result<Tensor> {
        let v = self.velocity(x, sigma, ctx)?;
        x - (v * sigma as f64)?
    }

    /// The CFG'd model output; cfg == 1 skips the uncond pass like ComfyUI.
    pub fn guided(&self, x: &Tensor, sigma: f32, cfg: f64) -> Result<Tensor> {
        let cond = self.denoised(x, sigma, &self.ctx_pos)?;
        if !guidance::needs_uncond(cfg) {
            return Ok(cond);
        }
        let uncond = self.denoised(x, sigma, &self.ctx_neg)?;
        guidance::cfg_combine(&cond, &uncond, cfg)
    }

    /// Wan21 `process_latent_in`: ((l − mean)·1.0)/std per channel (·1.0 is exact, omitted).
    pub fn process_in(&self, l: &Tensor) -> Tensor {
        l.broadcast_sub(&self.mean)
            .unwrap()
            .broadcast_div(&self.std)
            .unwrap()
    }

    /// Wan21 `process_latent_out`: ((out·std)/1.0) + mean (/1.0 is exact, omitted).
    pub fn process_out(&self, l: &Tensor) -> Tensor {
        l.broadcast_mul(&self.std)
            .unwrap()
            .broadcast_add(&self.mean)
            .unwrap()
    }
}

/// What one KSamplerAdvanced pass saw and produced.
pub struct Pass {
    /// The state entering each step (ComfyUI's callback `x`).
    pub x: Vec<Tensor>,
    /// The model output at each step.
    pub denoised: Vec<Tensor>,
    /// `x / (1 − σ_last)`; None when the cut is empty (the node returns its input).
    pub out: Option<Tensor>,
    /// The sigma of every model call, in order (two per step for heun, dpm_2, dpmpp_sde).
    pub call_sigmas: Vec<f32>,
    /// Every guided evaluation's input `x` and output, in call order.
    pub call_x: Vec<Tensor>,
    pub call_denoised: Vec<Tensor>,
}

pub struct PassArgs<'a> {
    pub full: &'a [f32],
    pub start: usize,
    pub end: Option<usize>,
    pub leftover_noise: bool,
    pub add_noise: bool,
    pub seed: u64,
    pub cfg: f64,
    /// ComfyUI sampler name.
    pub sampler: &'a str,
    /// Stored noise draws `[n, ...]` to replay instead of the seeded generator
    /// (ComfyUI's SDE samplers draw from a torchsde Brownian tree we do not port).
    pub draws: Option<&'a Tensor>,
}

/// The analytic field as the product's sampling pass sees a model: each
/// evaluation is recorded for the pass report.
struct Recorder<'a> {
    model: &'a Analytic,
}

impl Denoiser for Recorder<'_> {
    fn velocity(&mut self, x: &Tensor, call: &Call) -> Result<Tensor> {
        let ctx = match call.cond {
            Cond::Positive => &self.model.ctx_pos,
            Cond::Negative => &self.model.ctx_neg,
        };
        self.model.velocity(x, call.sigma, ctx)
    }
}

/// KSamplerAdvanced's settings for a pass over the explicit list `p.full`.
fn settings(p: &PassArgs) -> KSampler {
    KSampler {
        sampler: Sampler::parse(p.sampler).unwrap(),
        scheduler: Scheduler::parse("simple").unwrap(),
        steps: p.full.len() - 1,
        // The trace fixtures use ModelSamplingSD3(shift = 5).
        shift: 5.0,
        sigmas: Some(p.full.to_vec()),
        start: p.start,
        end: p.end,
        cfg: p.cfg,
        seed: p.seed,
        add_noise: p.add_noise,
        leftover_noise: p.leftover_noise,
        noise: None,
        noise_mask: None,
    }
}

/// One pass through the product's KSamplerAdvanced pass
/// (`sampling::ksampler`, what `Runtime::sample` runs) with the analytic
/// denoiser. `latent` is in model space.
pub fn ksampler_pass(model: &Analytic, latent: &Tensor, p: &PassArgs) -> Pass {
    ksampler_pass_with(model, latent, p, &mut samplers::SolverState::default())
}

/// [`ksampler_pass`] continuing (and updating) a solver state.
pub fn ksampler_pass_with(
    model: &Analytic,
    latent: &Tensor,
    p: &PassArgs,
    state: &mut samplers::SolverState,
) -> Pass {
    // ComfyUI's callback sees each step's first model evaluation; record
    // every guided evaluation and where each step ends, then keep the first
    // of each step.
    let calls = std::cell::RefCell::new(Vec::<(f32, Tensor, Tensor)>::new());
    let step_ends = std::cell::RefCell::new(Vec::<usize>::new());
    let mut observe = |sigma: f32, x: &Tensor, d: &Tensor| {
        calls.borrow_mut().push((sigma, x.clone(), d.clone()));
    };
    let mut drawn = 0usize;
    let mut replay = |_: &Tensor, _: f32, _: f32| -> Result<Tensor> {
        drawn += 1;
        p.draws.expect("replaying stored draws").get(drawn - 1)
    };
    let mut on_step = |_: usize, _: usize, _: f32| {
        step_ends.borrow_mut().push(calls.borrow().len());
    };
    let io = PassIo {
        on_step: &mut on_step,
        noise: match p.draws {
            Some(_) => Some(&mut replay),
            None => None,
        },
        observe: Some(&mut observe),
    };
    let outcome = settings(p)
        .run(&mut Recorder { model }, latent, state, io, "analytic pass")
        .unwrap();
    let calls = calls.into_inner();
    let firsts = std::iter::once(0).chain(step_ends.into_inner());
    let firsts: Vec<usize> = firsts.filter(|&c| c < calls.len()).collect();
    Pass {
        x: firsts.iter().map(|&c| calls[c].1.clone()).collect(),
        denoised: firsts.iter().map(|&c| calls[c].2.clone()).collect(),
        out: outcome.out,
        call_sigmas: calls.iter().map(|c| c.0).collect(),
        call_x: calls.iter().map(|c| c.1.clone()).collect(),
        call_denoised: calls.iter().map(|c| c.2.clone()).collect(),
    }
}

pub fn zeros_latent() -> Tensor {
    Tensor::zeros((1, 16, 2, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap()
}

/// Compares a pass against `<prefix>.x`, `.denoised`, `.sampler_out` bit for bit.
pub fn assert_pass_bit_exact(pass: &Pass, fx: &HashMap<String, Tensor>, prefix: &str) {
    assert_pass_close(pass, fx, prefix, 0.0);
}

/// Compares a pass against `<prefix>.x`, `.denoised`, `.sampler_out` per step,
/// within `tol` max abs (0 means bit for bit). Returns the largest difference.
pub fn assert_pass_close(pass: &Pass, fx: &HashMap<String, Tensor>, prefix: &str, tol: f64) -> f64 {
    let xs = &fx[&format!("{prefix}.x")];
    let ds = &fx[&format!("{prefix}.denoised")];
    let steps = xs.dim(0).unwrap();
    assert_eq!(pass.x.len(), steps, "{prefix}: steps seen");
    let check = |a: &Tensor, b: &Tensor, what: String| -> f64 {
        let d = super::max_abs_diff(a, b);
        println!("{what}: {} elems differ, max abs {d:.2e}", count_diff(a, b));
        if tol == 0.0 {
            assert_bit_exact(a, b, &what);
        } else {
            assert!(d <= tol, "{what}: max abs {d:.3e} > {tol:.1e}");
        }
        d
    };
    let mut worst = 0f64;
    for i in 0..steps {
        worst = worst.max(check(
            &pass.x[i],
            &xs.get(i).unwrap(),
            format!("{prefix}.x[{i}]"),
        ));
        worst = worst.max(check(
            &pass.denoised[i],
            &ds.get(i).unwrap(),
            format!("{prefix}.denoised[{i}]"),
        ));
    }
    let want = &fx[&format!("{prefix}.sampler_out")];
    worst.max(check(
        pass.out.as_ref().unwrap(),
        want,
        format!("{prefix}.sampler_out"),
    ))
}

// ---------------------------------------------------------------------------
// 3. sampler traces (steps 8, simple, shift 5, seed 42)

pub struct TraceSetup {
    pub fx: HashMap<String, Tensor>,
    pub model: Analytic,
    pub full: Vec<f32>,
    pub seed: u64,
    pub shift: f32,
}

pub fn trace_setup() -> TraceSetup {
    let js = load_json("comfy/sampler_traces.json");
    let fx = super::load_fixture("comfy/sampler_traces.safetensors");
    let model = Analytic::load(&fx);
    let steps = js["steps"].as_u64().unwrap() as usize;
    let shift = js["shift"].as_f64().unwrap() as f32;
    let seed = js["seed"].as_u64().unwrap();
    let full = sigmas::schedule("simple", steps, shift).unwrap();
    assert!(same_list(&full, &vec_of(&fx["trace.euler.sigmas_in"])));
    let init = Tensor::from_vec(
        noise::torch_randn(seed, 2048),
        (1, 16, 2, 8, 8),
        &Device::Cpu,
    )
    .unwrap();
    assert_bit_exact(&init, &fx["initial_noise"], "initial_noise");
    TraceSetup {
        fx,
        model,
        full,
        seed,
        shift,
    }
}

impl TraceSetup {
    /// The full list KSampler hands `sampler` (discard-penultimate for uni_pc, dpm_2).
    pub fn full_for(&self, sampler: &str) -> Vec<f32> {
        sigmas::for_sampler("simple", self.full.len() - 1, self.shift, sampler).unwrap()
    }

    pub fn run(
        &self,
        latent: &Tensor,
        start: usize,
        end: Option<usize>,
        add_noise: bool,
        cfg: f64,
    ) -> Pass {
        ksampler_pass(
            &self.model,
            latent,
            &PassArgs {
                full: &self.full,
                start,
                end,
                // KSampler forces a full denoise; split passes keep the leftover noise.
                leftover_noise: end.is_some(),
                add_noise,
                seed: self.seed,
                cfg,
                sampler: "euler",
                draws: None,
            },
        )
    }
}

/// KSamplerAdvanced's `end_at_step`: 10000 (ComfyUI's default) means "to the end".
pub fn end_arg(end_at_step: u64) -> Option<usize> {
    (end_at_step < 10000).then_some(end_at_step as usize)
}

/// Runs every `sampler` case of ksampler_split (steps 20, split 10, shift 8)
/// through [`ksampler_pass`] over `full`, each pass from a fresh state as
/// every KSamplerAdvanced pass is, and checks `sampler_out` within `tol` (0
/// means bit for bit), `node_out` within 4·tol (process_out scales by the
/// channel std, ≤ ~3.5), the model call count, and that an empty range hands
/// the input latent back. Returns the number of cases checked.
pub fn check_ksampler_split(sampler: &str, full: &[f32], tol: f64) -> usize {
    let js = load_json("comfy/ksampler_split.json");
    let fx = super::load_fixture("comfy/ksampler_split.safetensors");
    let model = Analytic::load(&super::load_fixture("comfy/sampler_traces.safetensors"));
    let pass1_node_out = &fx[&format!("{sampler}.standard_pass1_out")];
    let check = |a: &Tensor, b: &Tensor, tol: f64, what: String| {
        println!(
            "{what}: {} elems differ, max abs {:.2e}",
            count_diff(a, b),
            super::max_abs_diff(a, b)
        );
        if tol == 0.0 {
            assert_bit_exact(a, b, &what);
        } else {
            assert_max_abs(a, b, tol, &what);
        }
    };
    let mut n = 0;
    for case in js["cases"].as_array().unwrap() {
        if case["sampler"] != sampler {
            continue;
        }
        let key = case["key"].as_str().unwrap();
        // A non-empty input latent goes through process_latent_in (README §3.5).
        let latent = match case["input_latent"].as_str().unwrap() {
            "empty" => zeros_latent(),
            "standard_pass1_out" => model.process_in(pass1_node_out),
            other => panic!("{key}: input latent {other}"),
        };
        let pass = ksampler_pass(
            &model,
            &latent,
            &PassArgs {
                sampler,
                draws: None,
                full,
                start: case["start_at_step"].as_u64().unwrap() as usize,
                end: end_arg(case["end_at_step"].as_u64().unwrap()),
                leftover_noise: case["return_with_leftover_noise"] == "enable",
                add_noise: case["add_noise"] == "enable",
                seed: js["seed"].as_u64().unwrap(),
                cfg: js["cfg"].as_f64().unwrap(),
            },
        );
        let node_out = &fx[&format!("{key}.node_out")];
        match &pass.out {
            None => {
                assert!(
                    case["output_equals_input_latent"].as_bool().unwrap(),
                    "{key}"
                );
                // The node hands back its input latent untouched.
                assert_bit_exact(pass1_node_out, node_out, key);
            }
            Some(out) => {
                let want = &fx[&format!("{key}.sampler_out")];
                check(out, want, tol, format!("{key}.sampler_out"));
                check(
                    &model.process_out(out),
                    node_out,
                    4.0 * tol,
                    format!("{key}.node_out"),
                );
                let calls = f32_list(case, "model_call_sigmas");
                assert_eq!(pass.x.len(), calls.len(), "{key}: model calls");
            }
        }
        n += 1;
    }
    n
}

/// The `(σ, σ_next)` of every noise draw a pass takes, in order. The pass
/// runs with a recording noise source that draws what the pass's own
/// would (the seeded generator, or a Brownian tree over the cut for the
/// samplers the pass gives one), so the run is the product's run.
pub fn ksampler_draw_sigmas(model: &Analytic, latent: &Tensor, p: &PassArgs) -> Vec<(f32, f32)> {
    use baton::sampling::brownian::BrownianTree;
    let k = settings(p);
    let cut = k.cut_sigmas().unwrap().expect("a non-empty pass");
    let mut gen = noise::TorchGenerator::new(p.seed);
    let brownian = baton::sampling::uses_brownian_tree(p.sampler);
    let mut tree: Option<BrownianTree> = None;
    let mut seen = Vec::new();
    let mut record = |x: &Tensor, s: f32, sn: f32| -> Result<Tensor> {
        seen.push((s, sn));
        let v = if brownian {
            tree.get_or_insert_with(|| BrownianTree::for_sigmas(&cut, p.seed, x.elem_count()))
                .draw(s, sn)
        } else {
            gen.randn(x.elem_count())
        };
        Tensor::from_vec(v, x.shape(), x.device())
    };
    let mut on_step = |_: usize, _: usize, _: f32| {};
    let io = PassIo {
        on_step: &mut on_step,
        noise: Some(&mut record),
        observe: None,
    };
    k.run(
        &mut Recorder { model },
        latent,
        &mut samplers::SolverState::default(),
        io,
        "draw count",
    )
    .unwrap();
    seen
}
