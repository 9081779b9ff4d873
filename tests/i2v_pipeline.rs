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
    let run = common::baton_run_traced(
        "scripts/wan22_i2v.rhai",
        &out.path().join("o"),
        &trace,
        Some(cache.path()),
    );
    run.assert_ok();
    assert!(out.path().join("o/i2v.gif").metadata().unwrap().len() > 500);
    assert!(run.stdout.contains("(no models loaded)"), "{}", run.stdout);
    let plan = plan_json("scripts/wan22_i2v.rhai", cache.path());
    let n = plan["predicted"].as_array().unwrap().len();
    assert_close(
        "wan22_i2v",
        predicted_peak(&plan, 0..n),
        measured_peak(&read_json(&trace), 0.0, f64::MAX),
    );
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
    assert!(
        run.stderr.contains("applied LoRA lora-tiny-i2v-high"),
        "{}",
        run.stderr
    );
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
        &[
            "run".as_ref(),
            script.as_os_str(),
            "--out".as_ref(),
            dir.path().join("o").as_os_str(),
            "--allow-path".as_ref(),
            env!("CARGO_MANIFEST_DIR").as_ref(),
        ],
        Some(cache.path()),
    );
    run.assert_ok();
    assert!(
        run.stdout.contains("video [1, 3, 5, 64, 96]"),
        "{}",
        run.stdout
    );
}

/// The official T2V, I2V and TI2V-5B templates import and run on the tiny
/// models (`--map`, `--param` for a tiny size), each expert deleted before
/// the next loads.
#[test]
fn official_templates_import_and_run_on_tiny_models() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let maps: &[(&str, &[&str])] = &[
        (
            "video_wan2_2_14B_t2v.json",
            &[
                "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors=builtin:wan-tiny-high",
                "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors=builtin:wan-tiny-low",
                "umt5_xxl_fp8_e4m3fn_scaled.safetensors=builtin:umt5-tiny",
                "wan_2.1_vae.safetensors=builtin:wan-vae-tiny",
            ],
        ),
        (
            "video_wan2_2_14B_i2v.json",
            &[
                "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors=builtin:wan-tiny-i2v-high",
                "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors=builtin:wan-tiny-i2v-low",
                "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors=builtin:lora-tiny-i2v-high",
                "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors=builtin:lora-tiny-i2v-low",
                "umt5_xxl_fp8_e4m3fn_scaled.safetensors=builtin:umt5-tiny",
                "wan_2.1_vae.safetensors=builtin:wan-vae-tiny",
            ],
        ),
        (
            "video_wan2_2_5B_ti2v.json",
            &[
                "wan2.2_ti2v_5B_fp16.safetensors=builtin:wan-tiny-ti2v",
                "umt5_xxl_fp8_e4m3fn_scaled.safetensors=builtin:umt5-tiny",
                "wan2.2_vae.safetensors=builtin:wan22-vae-tiny",
            ],
        ),
    ];
    let image = format!(
        "image={}/tests/fixtures/wan_i2v/start.png",
        env!("CARGO_MANIFEST_DIR")
    );
    for (file, map) in maps {
        let wf = common::fixture(&format!("comfy_workflows/{file}"));
        let script = dir.path().join(format!("{file}.rhai"));
        let mut args: Vec<std::ffi::OsString> = vec![
            "import".into(),
            wf.into(),
            "-o".into(),
            script.clone().into(),
        ];
        for m in *map {
            args.extend(["--map".into(), (*m).into()]);
        }
        let size = if file.contains("ti2v") {
            ["width=96", "height=64"]
        } else {
            ["width=64", "height=48"]
        };
        for p in [size[0], size[1], "length=5", "steps=2"] {
            args.extend(["--param".into(), p.into()]);
        }
        if file.contains("_i2v") {
            args.extend(["--param".into(), image.clone().into()]);
        }
        if file.contains("14B") {
            args.extend(["--param".into(), "split=1".into()]);
        }
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        common::baton(&refs, Some(cache.path())).assert_ok();
        let out = dir.path().join(format!("{file}.out"));
        let run = common::baton(
            &[
                "run".as_ref(),
                script.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
                "--allow-path".as_ref(),
                env!("CARGO_MANIFEST_DIR").as_ref(),
            ],
            Some(cache.path()),
        );
        run.assert_ok();
        println!(
            "{file}: {}",
            run.stdout
                .lines()
                .find(|l| l.contains("peak"))
                .unwrap_or("")
        );
        if let (Some(del), Some(load)) = (
            run.stderr.find("deleted high"),
            run.stderr.find("loaded low"),
        ) {
            assert!(
                del < load,
                "{file}: the high expert must go before the low one loads\n{}",
                run.stderr
            );
        } else {
            assert!(file.contains("ti2v"), "{file}: {}", run.stderr);
        }
    }
}

/// `baton make-tiny` writes the image-to-video set beside the T2V one, and
/// `baton inspect` reads each for what it is.
#[test]
fn make_tiny_writes_the_i2v_set() {
    let dir = tempfile::tempdir().unwrap();
    let run = common::baton(&["make-tiny".as_ref(), dir.path().as_os_str()], None);
    run.assert_ok();
    let inspect = |name: &str| {
        let path = dir.path().join(format!("{name}.safetensors"));
        assert!(
            run.stdout.contains(&format!("wrote {}", path.display())),
            "{name}: {}",
            run.stdout
        );
        let r = common::baton(&["inspect".as_ref(), path.as_os_str()], None);
        r.assert_ok();
        r.stdout
    };
    for name in [
        "wan-tiny-high",
        "wan-tiny-low",
        "umt5-tiny",
        "wan-vae-tiny",
        "lora-tiny-i2v-high",
        "lora-tiny-i2v-low",
    ] {
        inspect(name);
    }
    for (name, want) in [
        ("wan-tiny-i2v-high", "in/out 36/16"),
        ("wan-tiny-i2v-low", "in/out 36/16"),
        ("wan-tiny-ti2v", "in/out 48/48"),
        ("wan22-vae-tiny", "z_dim 48 (16x spatial, TI2V-5B)"),
    ] {
        let out = inspect(name);
        assert!(out.contains(want), "{name}: {out}");
    }
}
