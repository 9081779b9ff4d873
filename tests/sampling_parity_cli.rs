//! `baton run tests/scripts/sampling_parity.rhai` reproduces the diffusers
//! WanPipeline traces (Euler shift 5, UniPC shift 5, two-expert boundary run)
//! with baton's own schedules and the stdlib recipe; the script asserts each
//! step and this test checks that every check ran.

use std::process::Command;

#[test]
fn sampling_parity_script_passes() {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["run", "tests/scripts/sampling_parity.rhai"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running baton");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for name in ["euler", "unipc"] {
        for k in 0..6 {
            assert!(
                stdout.contains(&format!("{name} step {k} rel L2")),
                "{stdout}"
            );
        }
    }
    assert!(stdout.contains("two_expert final rel L2"), "{stdout}");
    assert!(stdout.contains("sampling parity: ok"), "{stdout}");
}
