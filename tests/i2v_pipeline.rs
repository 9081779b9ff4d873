//! Image to video end to end on the built-in tiny models: scripts/wan22_i2v.rhai
//! (umT5, VAE encode, two I2V experts with their LoRAs, VAE decode, each
//! deleted before the next loads), its `baton plan` against the measured
//! peak, first-last-frame through the same script, and the stdlib TI2V
//! recipe on `wan-tiny-ti2v` with `wan22-vae-tiny`.
mod common;

use common::plan::{assert_close, measured_peak, plan_json, predicted_peak, read_json};

#[test]
fn i2v_script_runs_and_plan_predicts_its_peak() {
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let trace = out.path().join("trace.json");
    let run = common::baton_run_traced("scripts/wan22_i2v.rhai", &out.path().join("o"), &trace, Some(cache.path()));
    run.assert_ok();
    assert!(out.path().join("o/i2v.gif").metadata().unwrap().len() > 500);
    assert!(run.stdout.contains("(no models loaded)"), "{}", run.stdout);
    let plan = plan_json("scripts/wan22_i2v.rhai", cache.path());
    let n = plan["predicted"].as_array().unwrap().len();
    assert_close("wan22_i2v", predicted_peak(&plan, 0..n), measured_peak(&read_json(&trace), 0.0, f64::MAX));
}

#[test]
fn first_last_frame_with_loras_runs() {
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("o");
    let run = common::baton(
        &[
            "run".as_ref(),
            "scripts/wan22_i2v.rhai".as_ref(),
            "--out".as_ref(),
            o.as_os_str(),
            "--set".as_ref(),
            "end=tests/fixtures/wan_i2v/end.png".as_ref(),
            "--set".as_ref(),
            "lora_high=builtin:lora-tiny-i2v-high".as_ref(),
            "--set".as_ref(),
            "lora_low=builtin:lora-tiny-i2v-low".as_ref(),
        ],
        Some(cache.path()),
    );
    run.assert_ok();
    assert!(run.stderr.contains("applied LoRA lora-tiny-i2v-high"), "{}", run.stderr);
    assert!(o.join("i2v.gif").exists());
}

#[test]
fn ti2v_recipe_runs_on_the_builtins() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("ti2v.rhai");
    std::fs::write(
        &script,
        r#"import "stdlib/wan22" as wan;
let te = load_model("builtin:umt5-tiny"); let pos = encode_text(te, "a cat"); delete_model(te);
let img = load_image("tests/fixtures/wan_i2v/ti2v_start.png");
let x = wan::ti2v("builtin:wan-tiny-ti2v", "builtin:wan22-vae-tiny",
                  #{ start_image: img, width: 96, height: 64, length: 5, steps: 2, cfg: 1.0, positive: pos });
let v = load_model("builtin:wan22-vae-tiny"); let video = decode(v, x); delete_model(v);
print(`video ${video.shape}`);
"#,
    )
    .unwrap();
    let run = common::baton(
        &["run".as_ref(), script.as_os_str(), "--out".as_ref(), dir.path().join("o").as_os_str(), "--allow-path".as_ref(), env!("CARGO_MANIFEST_DIR").as_ref()],
        Some(cache.path()),
    );
    run.assert_ok();
    assert!(run.stdout.contains("video [1, 3, 5, 64, 96]"), "{}", run.stdout);
}
