//! `baton run` on a script that calls `predict` on the golden inputs
//! reproduces the diffusers outputs, for the original and diffusers layouts,
//! in f32 (rel L2 <= 1e-4) and bf16 (<= 2e-2); the script itself asserts.

mod common;

use std::process::Command;

#[test]
fn predict_script_matches_diffusers_in_both_layouts() {
    let run = common::baton_run("tests/scripts/predict_parity.rhai".as_ref(), None, None);
    run.assert_ok();
    let stdout = &run.stdout;
    for layout in ["original", "diffusers"] {
        for case in ["case0", "case1", "case2", "case3", "bf16"] {
            assert!(
                stdout.contains(&format!("{layout} {case}: rel L2")),
                "{stdout}"
            );
        }
    }
    assert!(stdout.contains("predict parity: ok"), "{stdout}");
}

#[test]
fn a_failing_script_exits_nonzero_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("bad.rhai");
    std::fs::write(&script, "let a = 1;\nthrow \"stop here\";\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("run")
        .arg(&script)
        .output()
        .expect("running baton");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.rhai:2:1") && stderr.contains("stop here"),
        "{stderr}"
    );
}
