//! offload_model is ComfyUI's "unload": the device bytes are freed in the
//! ledger, the weights stay in host memory (ram() shows them), and the next
//! use brings the model back. Only delete_model frees the memory itself.

mod common;

use common::{as_f64, eval, eval_err, run, session_with};

#[test]
fn offload_frees_device_bytes_but_keeps_host_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = session_with(None, dir.path());
    run(
        &mut s,
        r#"
        let cases = load_tensors("tests/fixtures/wan_tiny/forward_cases.safetensors");
        let m = load_model("tests/fixtures/wan_tiny/original.safetensors", #{ name: "m" });
        let bytes = m.bytes;
        offload_model(m);
        "#,
    );
    assert_eq!(as_f64(eval(&mut s, "vram().used")), 0.0);
    assert!(eval(&mut s, "vram().models[0].state == \"host\"")
        .as_bool()
        .unwrap());
    assert_eq!(
        as_f64(eval(&mut s, "ram().host")),
        as_f64(eval(&mut s, "bytes"))
    );

    // While offloaded, another model can take the budget; then m cannot come back.
    run(&mut s, "vram_budget(bytes + 100); let other = load_model(\"tests/fixtures/wan_tiny/original_low.safetensors\", #{ name: \"other\", heads: 2 });");
    let e = eval_err(
        &mut s,
        "predict(m, cases.case0_x, cases.case0_t, cases.case0_context)",
    );
    assert!(
        e.contains("'m' was offloaded") && e.contains("other"),
        "{e}"
    );

    // Once there is room, using it brings it back with the same numbers.
    run(&mut s, "delete_model(other);");
    let err = as_f64(eval(
        &mut s,
        "rel_l2(predict(m, cases.case0_x, cases.case0_t, cases.case0_context), cases.case0_out)",
    ));
    assert!(err < 1e-4, "rel L2 {err}");
    assert_eq!(
        as_f64(eval(&mut s, "vram().used")),
        as_f64(eval(&mut s, "bytes"))
    );
    assert_eq!(as_f64(eval(&mut s, "ram().host")), 0.0);
}

#[test]
fn a_partially_loaded_model_computes_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = session_with(None, dir.path());
    run(
        &mut s,
        r#"
        let cases = load_tensors("tests/fixtures/wan_tiny/forward_cases.safetensors");
        let path = "tests/fixtures/wan_tiny/original.safetensors";
        let full = load_model(path, #{ name: "full" });
        vram_budget(full.bytes * 2 - 1);
        let part = load_model(path, #{ name: "part" });
        let a = predict(full, cases.case3_x, cases.case3_t, cases.case3_context);
        let b = predict(part, cases.case3_x, cases.case3_t, cases.case3_context);
        "#,
    );
    assert!(as_f64(eval(&mut s, "part.offloaded_bytes")) > 0.0);
    assert!(eval(&mut s, "vram().models[1].state == \"partial\"")
        .as_bool()
        .unwrap());
    // Streaming changes where the weights come from, not the arithmetic.
    assert_eq!(as_f64(eval(&mut s, "rel_l2(b, a)")), 0.0);
    assert!(as_f64(eval(&mut s, "rel_l2(b, cases.case3_out)")) < 1e-4);
}

/// The script `scripts/device_check.sh` runs on a card: offload and reload
/// of a whole and of a partly streamed expert keep the ledger (stream
/// buffers included) and the output exactly as they were. On the CPU the
/// driver check is absent; on a card the same script also fails on a leak.
#[test]
fn offload_parity_script_passes() {
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let run = common::baton_run(
        "tests/scripts/offload_parity.rhai".as_ref(),
        Some(out.path()),
        Some(cache.path()),
    );
    run.assert_ok();
    for budget in ["4GiB", "120MiB"] {
        assert!(
            run.stdout.contains(&format!("budget {budget}: offloaded")),
            "{}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("offload parity: ok"), "{}", run.stdout);
}
