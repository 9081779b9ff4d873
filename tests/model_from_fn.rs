//! `model_from_fn`: a script function as a model. The ComfyUI fixtures'
//! analytic field (tests/fixtures/comfy, README §4: v = tanh(A·x + b·σ + ctx)
//! per channel) written as a five-line Rhai function, sampled by the product's
//! `sample`, must reproduce ComfyUI's traces: f32 tensor maths against
//! ComfyUI's float64 field, within 1e-5 relative L2.

mod common;

use common::{as_f64, eval, eval_err, run, session_with};

const TRACES: &str = "tests/fixtures/comfy/sampler_traces.safetensors";
/// README §8's traces of every sampler, on a [1, 16, 1, 2, 4] latent.
const TRACES_EXT: &str = "tests/fixtures/comfy/sampler_traces_ext.safetensors";

/// The analytic field as the README shows it (batch-general).
fn field_script() -> String {
    field_script_from(TRACES)
}

/// The field with its A, b and contexts from the fixture file `traces`.
fn field_script_from(traces: &str) -> String {
    format!(
        r#"
        let fx = load_tensors("{traces}");
        let A = fx["analytic.A"];
        let b = reshape(fx["analytic.b"], [16, 1]);
        let field = model_from_fn(|x, sigma, ctx| {{
            let n = x.shape[0];
            let y = matmul(A, reshape(x, [n, 16, -1])) + b * sigma + reshape(ctx, [n, 16, 1]);
            reshape(tanh(y), x.shape)
        }}, #{{ name: "field" }});
        let pos = fx["analytic.context_pos"];
        let neg = fx["analytic.context_neg"];
        "#
    )
}

fn field_session(out: &std::path::Path) -> baton::host::Session {
    let mut s = session_with(None, out);
    run(&mut s, &field_script());
    s
}

/// The fixtures' setup (README §5): empty latent [1,16,2,8,8], steps 8,
/// simple, shift 5, seed 42.
fn trace_opts(sampler: &str, cfg: f64) -> String {
    format!(
        "#{{ positive: pos, negative: neg, sampler: \"{sampler}\", scheduler: \"simple\", \
         steps: 8, shift: 5.0, cfg: {cfg:?}, seed: 42 }}"
    )
}

/// Samples the field with `sampler` at `cfg` and compares the result with
/// ComfyUI's `<prefix>.sampler_out`.
fn check_trace(sampler: &str, cfg: f64, prefix: &str) {
    check_trace_in(TRACES, "[1, 16, 2, 8, 8]", sampler, cfg, prefix)
}

/// [`check_trace`] against the fixture file `traces` with its latent shape.
fn check_trace_in(traces: &str, shape: &str, sampler: &str, cfg: f64, prefix: &str) {
    let out = tempfile::tempdir().unwrap();
    let mut s = session_with(None, out.path());
    run(&mut s, &field_script_from(traces));
    let err = as_f64(eval(
        &mut s,
        &format!(
            "let x = sample(field, zeros({shape}), {});\n\
             rel_l2(x, fx[\"{prefix}.sampler_out\"])",
            trace_opts(sampler, cfg)
        ),
    ));
    println!("{prefix} ({sampler}, cfg {cfg}): rel L2 {err:.3e}");
    assert!(err <= 1e-5, "{prefix}: rel L2 {err:.3e} > 1e-5");
}

/// One line per ComfyUI trace: test name, sampler, cfg, fixture prefix.
macro_rules! traces {
    ($($test:ident: $sampler:literal, $cfg:literal, $prefix:literal;)*) => {
        $(
            #[test]
            fn $test() {
                check_trace($sampler, $cfg, $prefix);
            }
        )*
    };
}

traces! {
    euler_trace: "euler", 1.0, "trace.euler";
    dpmpp_2m_trace: "dpmpp_2m", 1.0, "trace.dpmpp_2m";
    euler_cfg35_trace: "euler", 3.5, "cfg3.5.euler";
    dpmpp_2m_cfg35_trace: "dpmpp_2m", 3.5, "cfg3.5.dpmpp_2m";
}

/// README §8's traces: the SDE sampler with its Brownian tree (drawn by the
/// product, not replayed) and the cfg_pp family, which needs the uncond
/// prediction even at cfg 1.
macro_rules! ext_traces {
    ($($test:ident: $sampler:literal, $cfg:literal, $prefix:literal;)*) => {
        $(
            #[test]
            fn $test() {
                check_trace_in(TRACES_EXT, "[1, 16, 1, 2, 4]", $sampler, $cfg, $prefix);
            }
        )*
    };
}

ext_traces! {
    ext_euler_trace: "euler", 1.0, "trace.euler";
    ext_dpmpp_2m_sde_trace: "dpmpp_2m_sde", 1.0, "trace.dpmpp_2m_sde";
    ext_euler_cfg_pp_trace: "euler_cfg_pp", 1.0, "trace.euler_cfg_pp";
    ext_euler_cfg_pp_cfg2_trace: "euler_cfg_pp", 2.0, "cfg2.euler_cfg_pp";
}

/// Two passes (0..3 with leftover noise, then 3..8 without added noise)
/// sharing a `sampler_state` continue dpmpp_2m's history, so they land on
/// ComfyUI's single-pass trace too.
#[test]
fn split_with_sampler_state_matches_the_single_pass_trace() {
    let out = tempfile::tempdir().unwrap();
    let mut s = field_session(out.path());
    let err = as_f64(eval(
        &mut s,
        r#"
        let st = sampler_state();
        let o = #{ positive: pos, sampler: "dpmpp_2m", scheduler: "simple", steps: 8,
                   shift: 5.0, cfg: 1.0, seed: 42, state: st };
        o.end = 3; o.leftover_noise = true;
        let x = sample(field, zeros([1, 16, 2, 8, 8]), o);
        o.start = 3; o.end = (); o.leftover_noise = false; o.add_noise = false;
        let x = sample(field, x, o);
        rel_l2(x, fx["trace.dpmpp_2m.sampler_out"])
        "#,
    ));
    println!("split dpmpp_2m with state: rel L2 {err:.3e}");
    assert!(err <= 1e-5, "rel L2 {err:.3e} > 1e-5");
}

/// `predict` calls the function with sigma = timestep / 1000.
#[test]
fn predict_calls_the_function_with_sigma() {
    let out = tempfile::tempdir().unwrap();
    let mut s = session_with(None, out.path());
    let err = as_f64(eval(
        &mut s,
        r#"
        let m = model_from_fn(|x, sigma, ctx| x * sigma + ctx);
        let x = randn([1, 16, 1, 2, 2], 1);
        let ctx = randn([1, 16, 1, 2, 2], 2);
        let v = predict(m, x, 250.0, ctx);
        rel_l2(v, x * 0.25 + ctx)
        "#,
    ));
    assert!(err < 1e-7, "rel L2 {err}");
}

/// It holds no weights: 0 bytes in the ledger and the getters, listed by
/// `loaded_models()` and `vram()`, and gone after `delete_model`.
#[test]
fn holds_no_weights_and_deletes_like_a_model() {
    let out = tempfile::tempdir().unwrap();
    let mut s = field_session(out.path());
    assert_eq!(as_f64(eval(&mut s, "field.bytes")), 0.0);
    assert_eq!(as_f64(eval(&mut s, "field.resident_bytes")), 0.0);
    assert_eq!(as_f64(eval(&mut s, "vram().used")), 0.0);
    assert_eq!(as_f64(eval(&mut s, "vram().models.len()")), 1.0);
    assert_eq!(as_f64(eval(&mut s, "loaded_models().len()")), 1.0);
    assert_eq!(eval(&mut s, "field.arch").to_string(), "scripted fn");
    assert_eq!(eval(&mut s, "field.name").to_string(), "field");
    assert_eq!(eval(&mut s, "field.dtype").to_string(), "f32");
    // offload_model moves nothing; the next use brings it back, still at 0.
    run(&mut s, "offload_model(field);");
    let err = as_f64(eval(
        &mut s,
        &format!(
            "rel_l2(sample(field, zeros([1, 16, 2, 8, 8]), {}), fx[\"trace.euler.sampler_out\"])",
            trace_opts("euler", 1.0)
        ),
    ));
    assert!(err <= 1e-5, "after offload_model: rel L2 {err:.3e}");
    assert_eq!(as_f64(eval(&mut s, "vram().used")), 0.0);
    run(&mut s, "delete_model(field);");
    assert_eq!(as_f64(eval(&mut s, "loaded_models().len()")), 0.0);
    assert_eq!(as_f64(eval(&mut s, "vram().models.len()")), 0.0);
    let e = eval_err(
        &mut s,
        "sample(field, zeros([1, 16, 2, 8, 8]), #{ positive: pos, cfg: 1.0 })",
    );
    assert!(e.contains("'field' was deleted at test.rhai:1"), "{e}");
}

/// An error inside the function names the function's line; the session
/// (its variables and models) goes on, and a wrong return is named.
#[test]
fn an_error_in_the_function_names_its_line_and_the_session_survives() {
    let out = tempfile::tempdir().unwrap();
    let mut s = field_session(out.path());
    let e = eval_err(
        &mut s,
        "let bad = model_from_fn(|x, sigma, ctx| {\n\
         \x20   if sigma < 0.9 { throw \"the field broke\"; }\n\
         \x20   x\n\
         });\n\
         sample(bad, zeros([1, 16, 2, 8, 8]), #{ positive: pos, cfg: 1.0, steps: 8, shift: 5.0 })",
    );
    assert!(e.contains("the field broke"), "{e}");
    assert!(
        e.starts_with("test.rhai:2:"),
        "the error should name line 2: {e}"
    );
    let e = eval_err(
        &mut s,
        "let worse = model_from_fn(|x, sigma, ctx| 1.0);\n\
         sample(worse, zeros([1, 16, 2, 8, 8]), #{ positive: pos, cfg: 1.0 })",
    );
    assert!(
        e.contains("returned a f64, not a tensor shaped like x"),
        "{e}"
    );
    assert!(e.starts_with("test.rhai:2:"), "{e}");
    let e = eval_err(
        &mut s,
        "let two = model_from_fn(|x, sigma| x);\n\
         sample(two, zeros([1, 16, 2, 8, 8]), #{ positive: pos, cfg: 1.0 })",
    );
    assert!(e.contains("must take three parameters"), "{e}");
    assert!(e.starts_with("test.rhai:2:"), "{e}");
    // The session still samples the field and matches ComfyUI.
    let err = as_f64(eval(
        &mut s,
        &format!(
            "rel_l2(sample(field, zeros([1, 16, 2, 8, 8]), {}), fx[\"trace.euler.sampler_out\"])",
            trace_opts("euler", 1.0)
        ),
    ));
    assert!(err <= 1e-5, "after the errors: rel L2 {err:.3e}");
}

/// The function may call primitives that read the runtime while the pass
/// runs (the runtime is not held during a pass).
#[test]
fn the_function_may_call_back_into_the_runtime() {
    let out = tempfile::tempdir().unwrap();
    let mut s = field_session(out.path());
    let used = as_f64(eval(
        &mut s,
        r#"
        let probe = model_from_fn(|x, sigma, ctx| { let u = vram().used; x * 0.0 });
        let x = sample(probe, zeros([1, 16, 2, 8, 8]), #{ positive: pos, cfg: 1.0, steps: 2 });
        vram().used
        "#,
    ));
    assert_eq!(used, 0.0);
}

/// The tensor functions a field needs broadcast as torch does.
#[test]
fn tensor_functions_broadcast_like_torch() {
    let out = tempfile::tempdir().unwrap();
    let mut s = session_with(None, out.path());
    let shape = |s: &mut baton::host::Session, code: &str| -> String {
        eval(s, &format!("({code}).shape")).to_string()
    };
    assert_eq!(
        shape(&mut s, "zeros([2, 1, 3]) + zeros([4, 1])"),
        "[2, 4, 3]"
    );
    assert_eq!(shape(&mut s, "zeros([3]) * zeros([2, 3])"), "[2, 3]");
    assert_eq!(
        shape(&mut s, "matmul(zeros([5, 2, 3]), zeros([3, 4]))"),
        "[5, 2, 4]"
    );
    assert_eq!(shape(&mut s, "matmul(zeros([2, 3]), zeros([3]))"), "[2]");
    assert_eq!(
        shape(&mut s, "matmul(zeros([3]), zeros([7, 3, 4]))"),
        "[7, 4]"
    );
    assert_eq!(
        shape(&mut s, "reshape(zeros([2, 3, 4]), [4, -1])"),
        "[4, 6]"
    );
    let e = eval_err(&mut s, "zeros([2, 3]) + zeros([4])");
    assert!(
        e.contains("cannot add tensors of shapes [2, 3] and [4]"),
        "{e}"
    );
    let e = eval_err(&mut s, "matmul(zeros([2, 3]), zeros([4, 5]))");
    assert!(e.contains("do not chain"), "{e}");
    let e = eval_err(&mut s, "reshape(zeros([2, 3]), [4, -1])");
    assert!(e.contains("cannot infer"), "{e}");
    // Values: exp, sqrt, tanh and a matmul against hand-computed numbers.
    let v = eval(
        &mut s,
        r#"
        let a = reshape(randn([6], 3) * 0.0 + 1.0, [2, 3]);      // ones
        let m = matmul(a, reshape(randn([3], 4) * 0.0 + 2.0, [3, 1])); // 6, 6
        to_list(sqrt(m * 6.0)) + to_list(exp(zeros([1]))) + to_list(tanh(zeros([1]) + 100.0))
        "#,
    );
    let v: Vec<f64> = v.into_array().unwrap().into_iter().map(as_f64).collect();
    assert_eq!(v, vec![6.0, 6.0, 1.0, 1.0]);
}

/// `baton plan` does not call the function: 0 bytes, the pass noted.
#[test]
fn a_plan_counts_it_at_zero_bytes_without_calling_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("toy.rhai");
    std::fs::write(
        &script,
        r#"
        let toy = model_from_fn(|x, sigma, ctx| { throw "called while planning"; });
        let pos = zeros([1, 1, 16]);
        let x = sample(toy, zeros([1, 16, 2, 8, 8]), #{ positive: pos, cfg: 1.0, steps: 4 });
        let v = predict(toy, x, 500.0, pos);
        delete_model(toy);
        "#,
    )
    .unwrap();
    let plan = common::plan::plan_json(script.to_str().unwrap(), dir.path());
    let text = plan.to_string();
    assert!(text.contains("not run while planning"), "{text}");
    assert!(!text.contains("called while planning"), "{text}");
}

/// `run.json` lists it as a function of the (hashed) script, not a file.
#[test]
fn the_run_manifest_names_it_a_script_function() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("toy.rhai");
    std::fs::write(
        &script,
        r#"
        let toy = model_from_fn(|x, sigma, ctx| x * 0.5 + ctx, #{ name: "toy" });
        let pos = zeros([1, 16, 1, 1, 1]);
        let x = sample(toy, zeros([1, 16, 1, 2, 2]), #{ positive: pos, cfg: 1.0, steps: 4 });
        "#,
    )
    .unwrap();
    let out = dir.path().join("out");
    common::baton_run(&script, Some(&out), Some(dir.path())).assert_ok();
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    let m = &run["models"][0];
    assert_eq!(m["name"], "toy", "{run}");
    assert_eq!(m["script_function"], true, "{run}");
    assert!(m.get("error").is_none(), "{run}");
    assert_eq!(run["samples"][0]["model"], "toy", "{run}");
}
