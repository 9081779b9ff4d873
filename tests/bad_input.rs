//! Bad input gets a clear error that names the file, key or script position,
//! and the session (with the models already loaded) survives it.

mod common;

use candle_core::{Device, Tensor};
use common::golden::{copy_tiny_config, predict_case, TINY_DIT};
use common::survivor::{assert_survivor_works_counting, survivor};
use common::{as_f64, eval, eval_err, fixture, load_fixture, run};
use std::path::Path;

/// Counts the models in the ledger (`vram().models`), which a failed load
/// must leave as it was.
fn assert_survivor_works(s: &mut baton::host::Session) {
    assert_survivor_works_counting(s, "vram().models.len()");
}

fn write_modified(path: &Path, edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) {
    let mut t = load_fixture("wan_tiny/original.safetensors");
    edit(&mut t);
    candle_core::safetensors::save(&t, path).unwrap();
    copy_tiny_config(path.parent().unwrap());
}

fn load_error(s: &mut baton::host::Session, path: &Path) -> String {
    eval_err(
        s,
        &format!(r#"let bad = load_model("{}");"#, path.display()),
    )
}

#[test]
fn truncated_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.safetensors");
    let bytes = std::fs::read(fixture("wan_tiny/original.safetensors")).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let mut s = survivor(dir.path());
    let e = load_error(&mut s, &path);
    assert!(
        e.contains("truncated.safetensors") && e.contains("truncated"),
        "{e}"
    );
    assert!(
        e.starts_with("test.rhai:1:"),
        "error should carry the script position: {e}"
    );
    assert_survivor_works(&mut s);
}

#[test]
fn corrupt_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.safetensors");
    let mut bytes = 64u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[b'{'; 64]);
    std::fs::write(&path, bytes).unwrap();
    let mut s = survivor(dir.path());
    let e = load_error(&mut s, &path);
    assert!(
        e.contains("garbage.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    assert_survivor_works(&mut s);
}

#[test]
fn wrong_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = survivor(dir.path());
    let e = load_error(&mut s, &fixture("wan_tiny/forward_cases.safetensors"));
    assert!(
        e.contains("forward_cases.safetensors") && e.contains("not a Wan DiT"),
        "{e}"
    );
    assert_survivor_works(&mut s);
}

#[test]
fn missing_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.safetensors");
    write_modified(&path, |t| {
        t.remove("blocks.1.ffn.2.bias");
    });
    let mut s = survivor(dir.path());
    let e = load_error(&mut s, &path);
    assert!(
        e.contains("missing.safetensors") && e.contains("blocks.1.ffn.2.bias"),
        "{e}"
    );
    assert_survivor_works(&mut s);
}

#[test]
fn shape_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("misshapen.safetensors");
    write_modified(&path, |t| {
        t.insert(
            "blocks.0.self_attn.norm_q.weight".into(),
            Tensor::ones(40, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let mut s = survivor(dir.path());
    let e = load_error(&mut s, &path);
    assert!(
        e.contains("misshapen.safetensors")
            && e.contains("blocks.0.self_attn.norm_q.weight")
            && e.contains("shape"),
        "{e}"
    );
    assert_survivor_works(&mut s);
}

/// fp8 weights load (dequantised), but a scale that fits neither per-tensor
/// nor per-output-channel is an error naming the scale and the weight.
#[test]
fn a_misshapen_fp8_scale_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fp8.safetensors");
    write_modified(&path, |t| {
        let w = t["blocks.0.ffn.0.weight"]
            .to_dtype(candle_core::DType::F8E4M3)
            .unwrap();
        t.insert("blocks.0.ffn.0.weight".into(), w);
        let bad = candle_core::Tensor::ones(3, candle_core::DType::F32, &candle_core::Device::Cpu);
        t.insert("blocks.0.ffn.0.scale_weight".into(), bad.unwrap());
    });
    let mut s = survivor(dir.path());
    let e = load_error(&mut s, &path);
    assert!(
        e.contains("blocks.0.ffn.0.scale_weight")
            && e.contains("blocks.0.ffn.0.weight")
            && e.contains("3 values"),
        "{e}"
    );
    assert_survivor_works(&mut s);
}

#[test]
fn comfy_prefix_is_stripped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("comfy.safetensors");
    let t: std::collections::HashMap<String, Tensor> =
        load_fixture("wan_tiny/original.safetensors")
            .into_iter()
            .map(|(k, v)| (format!("model.diffusion_model.{k}"), v))
            .collect();
    candle_core::safetensors::save(&t, &path).unwrap();
    copy_tiny_config(dir.path());
    let mut s = survivor(dir.path());
    let err = as_f64(eval(
        &mut s,
        &format!(
            r#"let m = load_model("{}"); rel_l2({}, cases.case1_out)"#,
            path.display(),
            predict_case("m", "cases", "case1")
        ),
    ));
    assert!(err < 1e-4, "prefixed checkpoint: rel L2 {err}");
}

#[test]
fn deleted_handle_names_where_it_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = survivor(dir.path());
    let e = eval_err(
        &mut s,
        &format!(
            "let m = load_model(\"{TINY_DIT}\", #{{ name: \"gone\" }});\ndelete_model(m);\nlet y = predict(m, cases.case0_x, 1.0, cases.case0_context);"
        ),
    );
    assert!(e.contains("model 'gone' was deleted at test.rhai:2"), "{e}");
    assert!(
        e.starts_with("test.rhai:3:"),
        "the error should point at the use: {e}"
    );
    assert!(as_f64(eval(&mut s, "if m.deleted { 1 } else { 0 }")) == 1.0);
    assert_survivor_works(&mut s);
}

#[test]
fn over_budget_without_offload_names_what_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = survivor(dir.path());
    let e = eval_err(
        &mut s,
        &format!("vram_budget(keep.bytes + 1000);\nlet m = load_model(\"{TINY_DIT}\", #{{ name: \"second\", offload: \"never\" }});"),
    );
    assert!(e.starts_with("test.rhai:2:"), "{e}");
    assert!(
        e.contains("'second'") && e.contains("keep") && e.contains("delete_model"),
        "{e}"
    );
    assert_survivor_works(&mut s);
}

#[test]
fn script_errors_carry_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = survivor(dir.path());
    let e = eval_err(&mut s, "let a = 1;\nlet b = a + undefined_thing;");
    assert!(e.starts_with("test.rhai:2:13"), "{e}");
    let e = eval_err(&mut s, "let a = 1;\n  let b = (;");
    assert!(
        e.starts_with("test.rhai:2:") && e.contains("syntax error"),
        "{e}"
    );
    let e = eval_err(&mut s, "fn f(x) {\n  x + nope\n}\nf(1)");
    assert!(
        e.starts_with("test.rhai:2:"),
        "error inside a function points inside it: {e}"
    );
    assert_survivor_works(&mut s);
}

#[test]
fn unknown_option_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = survivor(dir.path());
    let e = eval_err(
        &mut s,
        "let x = sample(keep, cases.case0_x, #{ positive: cases.case0_context, cfgg: 2.0 });",
    );
    assert!(
        e.contains("unknown option 'cfgg'") && e.starts_with("test.rhai:1:"),
        "{e}"
    );
    let e = eval_err(&mut s, "let x = empty_latent(#{ width: 100, height: 64 });");
    assert!(e.contains("multiples of 16"), "{e}");
    // Ints are accepted where floats are expected.
    run(
        &mut s,
        "let x = sample(keep, cases.case0_x, #{ positive: cases.case0_context, steps: 2, cfg: 1, shift: 5 });",
    );
    let e = eval_err(
        &mut s,
        "let x = sample(keep, cases.case0_x, #{ positive: cases.case0_context, cfg: 3.5 });",
    );
    assert!(e.contains("negative"), "{e}");
    let e = eval_err(
        &mut s,
        "let x = sample(keep, cases.case0_x, #{ positive: cases.case0_x, cfg: 1.0, steps: 2 });",
    );
    assert!(
        e.contains("context [B, L, 32]"),
        "a malformed context should be named: {e}"
    );
    assert_survivor_works(&mut s);
}

#[test]
fn outputs_are_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = survivor(dir.path());
    let p = eval(
        &mut s,
        r#"save_tensors(#{ out: cases.case0_out }, "sub/result.safetensors")"#,
    )
    .to_string();
    assert!(Path::new(&p).starts_with(dir.path()));
    let back = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    assert_eq!(back["out"].dims(), &[1, 16, 1, 4, 4]);
    // A failed save (a non-tensor value) leaves no file and no temp file behind.
    let e = eval_err(
        &mut s,
        r#"save_tensors(#{ out: 3 }, "sub/bad.safetensors")"#,
    );
    assert!(e.contains("'out'"), "{e}");
    let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["result.safetensors".to_string()]);
}

#[test]
fn degenerate_inputs_are_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = survivor(dir.path());
    let cases = [
        ("predict(keep, zeros([1, 16, 0, 4, 4]), 1.0, cases.case0_context)", "empty dimension"),
        ("predict(keep, cases.case0_x, 1.0, zeros([1, 0, 32]))", "no tokens"),
        ("sample(keep, cases.case0_x, #{ positive: cases.case0_context, cfg: 1, sigmas: [1.0, 1.0] })", "last sigma"),
        ("sample(keep, cases.case0_x, #{ positive: cases.case0_context, cfg: 1, sigmas: [2.0, 0.0] })", "[0, 1]"),
        ("sample(keep, cases.case0_x, #{ positive: cases.case0_context, cfg: 1, steps: 100000000000 })", "steps must be between"),
        ("sample(keep, cases.case0_x, #{ positive: cases.case0_context, cfg: 1, sampler: \"dpm\" })", "unknown sampler 'dpm'"),
        ("zeros([100000, 100000, 100000])", "elements"),
        ("predict(keep, cases.case0_x, cases.case3_t, cases.case0_context)", "2 timesteps for batch 1"),
    ];
    for (code, want) in cases {
        let e = eval_err(&mut s, code);
        assert!(e.contains(want), "{code}: {e}");
        // Messages are for script authors: no candle backtrace, even with RUST_BACKTRACE set.
        assert!(!e.contains("candle_core::"), "{code}: {e}");
    }
    assert_survivor_works(&mut s);
}

#[test]
fn a_bad_streamed_block_fails_at_load_time() {
    let dir = tempfile::tempdir().unwrap();
    for (name, edit, want) in [
        (
            "missing",
            Box::new(|t: &mut std::collections::HashMap<String, Tensor>| {
                t.remove("blocks.1.ffn.2.bias");
            }) as Box<dyn Fn(&mut _)>,
            "blocks.1.ffn.2.bias",
        ),
        (
            "misshapen",
            Box::new(|t: &mut std::collections::HashMap<String, Tensor>| {
                let w = Tensor::ones(40, candle_core::DType::F32, &Device::Cpu).unwrap();
                t.insert("blocks.1.cross_attn.norm_k.weight".into(), w);
            }),
            "blocks.1.cross_attn.norm_k.weight",
        ),
    ] {
        let path = dir.path().join(format!("{name}.safetensors"));
        write_modified(&path, |t| edit(t));
        let mut s = survivor(dir.path());
        // One byte short of a second copy: every block of the new model streams
        // (the tiny model's stem plus a block buffer leaves no room for more).
        let e = eval_err(
            &mut s,
            &format!(
                "vram_budget(keep.bytes * 2 - 1);\nlet bad = load_model(\"{}\");",
                path.display()
            ),
        );
        assert!(e.starts_with("test.rhai:2:") && e.contains(want), "{e}");
        assert_survivor_works(&mut s);
        assert_eq!(
            as_f64(eval(&mut s, "vram().used")),
            as_f64(eval(&mut s, "keep.bytes"))
        );
    }
}
