//! The umT5 text encoder through the runtime and the script primitives:
//! `load_model` recognises it (and finds the SentencePiece model beside the
//! file or inside it), `encode_ids` matches transformers' UMT5EncoderModel on
//! the fixtures, `tokenize` matches SentencePiece, `encode_text` returns the
//! zero-padded 512-row context the DiT takes, truncation is reported, and
//! handing the wrong kind of model to a primitive is a clear error.
//! (The encoder's own numerics are covered in tests/umt5_parity.rs.)
mod common;

use common::{as_f64, eval, eval_err, run, session_with};

const SETUP: &str = r#"
let te = load_model("tests/fixtures/umt5_tiny/hf.safetensors", #{ name: "te" });
let c = load_tensors("tests/fixtures/umt5_tiny/cases.safetensors");
"#;

#[test]
fn encode_ids_matches_transformers() {
    let (_out, mut s) = common::session_after(SETUP);
    for case in ["case0", "case_long"] {
        let err = as_f64(eval(
            &mut s,
            &format!(
                r#"rel_l2(encode_ids(te, c["{case}.input_ids"], c["{case}.attention_mask"]),
                          c["{case}.last_hidden_state"])"#
            ),
        ));
        println!("{case}: rel L2 {err:.3e}");
        // f32 against transformers f32: measured 3.8e-7 / 4.6e-7.
        assert!(err <= 1e-5, "{case}: rel L2 {err:.3e}");
    }
    assert_eq!(eval(&mut s, "te.arch").into_string().unwrap(), "umt5 2x32");
}

#[test]
fn tokenize_and_encode_text() {
    let (_out, mut s) = common::session_after(SETUP);
    // SentencePiece with byte fallback (what ComfyUI gets); tokens.json's spm_eos_ids.
    let ids = eval(
        &mut s,
        r#"to_list(tokenize(te, "A cat walks on the beach at sunset, cinematic lighting.").ids)"#,
    )
    .into_array()
    .unwrap();
    let ids: Vec<i64> = ids.iter().map(|v| as_f64(v.clone()) as i64).collect();
    let want = [
        348, 324, 267, 282, 340, 278, 260, 262, 272, 264, 261, 283, 295, 345, 263, 267, 266, 293,
        286, 259, 401, 271, 261, 395, 336, 300, 349, 303, 308, 265, 1,
    ];
    assert_eq!(ids, want);
    let v = eval(
        &mut s,
        r#"
        let ctx = encode_text(te, "A cat walks on the beach at sunset, cinematic lighting.");
        let t = tokenize(te, "A cat walks on the beach at sunset, cinematic lighting.");
        let h = encode_ids(te, t.ids, t.mask);
        // The first 31 rows are the encoder's, the rest are zeros.
        [ctx.shape, rel_l2(ctx.narrow(1, 0, 31), h), max_abs(ctx.narrow(1, 31, 481))]
        "#,
    )
    .into_array()
    .unwrap();
    let shape: Vec<i64> = v[0]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|d| d.as_int().unwrap())
        .collect();
    assert_eq!(shape, [1, 512, 32]);
    assert_eq!(as_f64(v[1].clone()), 0.0);
    assert_eq!(as_f64(v[2].clone()), 0.0);
}

#[test]
fn long_prompts_are_truncated_and_reported() {
    let (_out, mut s) = common::session_after(SETUP);
    let v = eval(
        &mut s,
        r#"
        let long = "";
        for i in 0..200 { long += "a cat walks on the beach "; }
        let t = tokenize(te, long, #{ max_len: 16 });
        [t.dropped, t.ids.shape[1], to_list(t.ids)[15]]
        "#,
    )
    .into_array()
    .unwrap();
    assert!(as_f64(v[0].clone()) > 1000.0, "dropped {:?}", v[0]);
    assert_eq!(as_f64(v[1].clone()), 16.0);
    assert_eq!(as_f64(v[2].clone()), 1.0, "EOS stays last");
}

#[test]
fn wrong_model_kinds_are_clear_errors() {
    let (_out, mut s) = common::session_after(SETUP);
    run(
        &mut s,
        r#"let dit = load_model("tests/fixtures/wan_tiny/original.safetensors", #{ name: "dit" });"#,
    );
    let e = eval_err(&mut s, r#"encode_text(dit, "a cat")"#);
    assert!(
        e.contains("'dit' is a wan-dit model, not a text encoder"),
        "{e}"
    );
    let e = eval_err(
        &mut s,
        r#"sample(te, zeros([1, 16, 1, 4, 4]), #{ positive: zeros([1, 4, 32]), cfg: 1.0 })"#,
    );
    assert!(
        e.contains("'te' is a umt5 model, not a Wan diffusion model"),
        "{e}"
    );
    let e = eval_err(
        &mut s,
        r#"encode_ids(te, c["case0.input_ids"], zeros([2, 3]))"#,
    );
    assert!(e.contains("encode_ids"), "{e}");
    // Over budget: a text encoder is loaded whole, so it must fit.
    run(&mut s, r#"vram_budget(600000);"#); // dit 0.36 MB + te 0.15 MB loaded
    let e = eval_err(
        &mut s,
        r#"load_model("tests/fixtures/umt5_tiny/hf.safetensors", #{ name: "te2" })"#,
    );
    assert!(e.contains("'te2' needs") && e.contains("te: "), "{e}");
    // The session and both models survive.
    assert_eq!(as_f64(eval(&mut s, "loaded_models().len()")), 2.0);
}

#[test]
fn a_text_encoder_without_a_tokenizer_says_how_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("te.safetensors");
    std::fs::copy(common::fixture("umt5_tiny/hf.safetensors"), &f).unwrap();
    let mut s = session_with(None, dir.path());
    run(
        &mut s,
        &format!(
            r#"let te = load_model("{}", #{{ name: "te" }});"#,
            f.display()
        ),
    );
    let e = eval_err(&mut s, r#"encode_text(te, "a cat")"#);
    assert!(
        e.contains("no tokenizer") && e.contains("tokenizer:"),
        "{e}"
    );
    run(
        &mut s,
        &format!(
            r#"let te2 = load_model("{}", #{{ name: "te2", tokenizer: "{}" }});"#,
            f.display(),
            common::fixture("umt5_tiny/spiece.model").display()
        ),
    );
    assert_eq!(
        as_f64(eval(&mut s, r#"tokenize(te2, "a").ids.shape[1]"#)),
        2.0
    );
}

/// `encode_text` warns on stderr when a prompt is cut to fit the 512 rows.
#[test]
fn truncation_is_a_warning_the_user_sees() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("long.rhai");
    std::fs::write(
        &script,
        format!(
            r#"
let te = load_model("{}", #{{ name: "te" }});
let long = "";
for i in 0..300 {{ long += "a cat walks on the beach "; }}
let ctx = encode_text(te, long);
print(`rows ${{ctx.shape[1]}}`);
"#,
            common::fixture("umt5_tiny/hf.safetensors").display()
        ),
    )
    .unwrap();
    let run = common::baton_run(&script, None, None);
    run.assert_ok();
    let (stdout, stderr) = (&run.stdout, &run.stderr);
    assert!(stdout.contains("rows 512"), "{stdout}");
    assert!(
        stderr.contains("more than 512") && stderr.contains("were dropped"),
        "{stderr}"
    );
}

/// ComfyUI's scaled-fp8 text encoders load: each linear is F8_E4M3 with a
/// `scale_weight`, dequantised at load; kept in f32 the encoder equals the
/// dequantised reference exactly.
#[test]
fn a_scaled_fp8_text_encoder_matches_its_dequantised_reference() {
    use candle_core::{DType, Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let base = common::load_fixture("umt5_tiny/hf.safetensors");
    let (mut fp8, mut reference) = (
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    );
    for (k, w) in base {
        let linear = k.starts_with("encoder.block.")
            && w.rank() == 2
            && !k.contains("relative_attention_bias");
        if !linear {
            fp8.insert(k.clone(), w.clone());
            reference.insert(k, w);
            continue;
        }
        let (q, scale, deq) = common::quantise_fp8(&w);
        let stem = k.strip_suffix(".weight").unwrap();
        fp8.insert(
            format!("{stem}.scale_weight"),
            Tensor::new(&[scale], &Device::Cpu).unwrap(),
        );
        fp8.insert(k.clone(), q);
        reference.insert(k, deq);
    }
    fp8.insert(
        "scaled_fp8".into(),
        Tensor::zeros(0, DType::F8E4M3, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&fp8, dir.path().join("te_fp8.safetensors")).unwrap();
    candle_core::safetensors::save(&reference, dir.path().join("te_ref.safetensors")).unwrap();
    let mut s = session_with(None, dir.path());
    let d = dir.path().display();
    let v = eval(
        &mut s,
        &format!(
            r#"
            let c = load_tensors("{}");
            let q = load_model("{d}/te_fp8.safetensors", #{{ name: "q", dtype: "f32" }});
            let qb = load_model("{d}/te_fp8.safetensors", #{{ name: "qb" }});
            let r = load_model("{d}/te_ref.safetensors", #{{ name: "r" }});
            let want = encode_ids(r, c["case0.input_ids"], c["case0.attention_mask"]);
            [rel_l2(encode_ids(q, c["case0.input_ids"], c["case0.attention_mask"]), want),
             rel_l2(encode_ids(qb, c["case0.input_ids"], c["case0.attention_mask"]), want),
             rel_l2(want, c["case0.last_hidden_state"]), qb.dtype]
            "#,
            common::fixture("umt5_tiny/cases.safetensors").display()
        ),
    )
    .into_array()
    .unwrap();
    let (exact, bf16, quant) = (
        as_f64(v[0].clone()),
        as_f64(v[1].clone()),
        as_f64(v[2].clone()),
    );
    println!("fp8 umT5: f32 {exact:.2e}, bf16 {bf16:.2e}, quantisation {quant:.2e}");
    assert!(exact <= 1e-6, "{exact:.3e}");
    assert_eq!(v[3].clone().into_string().unwrap(), "bf16");
    assert!(bf16 <= 3e-2, "{bf16:.3e}");
    assert!(quant > 1e-4, "quantisation changed nothing");
}
