//! `baton run tests/scripts/sampling_parity.rhai` reproduces the diffusers
//! WanPipeline traces (Euler shift 5, UniPC shift 5, two-expert boundary run)
//! with baton's own schedules and the stdlib recipe; the script asserts each
//! step and this test checks that every check ran.

mod common;

#[test]
fn sampling_parity_script_passes() {
    let run = common::baton_run("tests/scripts/sampling_parity.rhai".as_ref(), None, None);
    run.assert_ok();
    let stdout = &run.stdout;
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
