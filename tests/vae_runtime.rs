//! The Wan VAE through the runtime and the script primitives: `load_model`
//! recognises it in either key layout, `decode(..., #{ raw: true })` and
//! `encode(..., #{ raw: true })` match diffusers' AutoencoderKLWan on the
//! fixtures, the default (normalised) forms are the sampler-space inverses of
//! each other's raw forms, and misuse is a clear error. The VAE's own
//! numerics are covered in tests/wan_vae_parity.rs; the whole prompt-to-video
//! pipeline runs in `prompt_to_video_script_runs`.
mod common;

use common::{as_f64, eval, eval_err, run};

const SETUP: &str = r#"
let vae = load_model("tests/fixtures/wan_vae_tiny/original.safetensors", #{ name: "vae" });
let c = load_tensors("tests/fixtures/wan_vae_tiny/cases.safetensors");
"#;

#[test]
fn decode_and_encode_match_diffusers() {
    let (_out, mut s) = common::session_after(SETUP);
    assert_eq!(
        eval(&mut s, "vae.arch").into_string().unwrap(),
        "wan-vae 2.1 width 4"
    );
    for case in ["decode_t1_h4_w4", "decode_t3_h4_w6", "decode_t4_h2_w4"] {
        for (opts, want) in [("", "video"), (", clamp: false", "video_unclamped")] {
            let err = as_f64(eval(
                &mut s,
                &format!(
                    r#"max_abs(decode(vae, c["{case}.latent"], #{{ raw: true{opts} }}) - c["{case}.{want}"])"#
                ),
            ));
            println!("{case} {want}: max abs {err:.2e}");
            // f32 vs diffusers f32: measured ≤ 9.1e-6 at the model level.
            assert!(err <= 1e-4, "{case} {want}: {err:.3e}");
        }
    }
    let err = as_f64(eval(
        &mut s,
        r#"max_abs(encode(vae, c["encode_t5_h16_w16.video"], #{ raw: true }) - c["encode_t5_h16_w16.latent_mean"])"#,
    ));
    assert!(err <= 1e-5, "encode: {err:.3e}");
    // Sampler space: encode() normalises, decode() denormalises, so they
    // compose like the raw forms.
    let d = as_f64(eval(
        &mut s,
        r#"
        let v = c["encode_t5_h16_w16.video"];
        max_abs(decode(vae, encode(vae, v)) - decode(vae, encode(vae, v, #{ raw: true }), #{ raw: true }))
        "#,
    ));
    assert!(d <= 1e-5, "normalise/denormalise round trip: {d:.3e}");
}

#[test]
fn misuse_is_a_clear_error_and_the_session_survives() {
    let (out, mut s) = common::session_after(SETUP);
    run(
        &mut s,
        r#"let dit = load_model("tests/fixtures/wan_tiny/original.safetensors", #{ name: "dit" });"#,
    );
    let e = eval_err(&mut s, r#"decode(dit, c["decode_t1_h4_w4.latent"])"#);
    assert!(e.contains("'dit' is a wan-dit model, not a VAE"), "{e}");
    let e = eval_err(&mut s, r#"decode(vae, zeros([1, 4, 1, 4, 4]))"#);
    assert!(e.contains("decode") && e.contains("[1, 4, 1, 4, 4]"), "{e}");
    let e = eval_err(&mut s, r#"encode(vae, zeros([1, 3, 4, 16, 16]))"#);
    assert!(e.contains("encode"), "{e}");
    let e = eval_err(
        &mut s,
        r#"decode(vae, c["decode_t1_h4_w4.latent"], #{ rawx: true })"#,
    );
    assert!(e.contains("unknown option 'rawx'"), "{e}");
    let e = eval_err(&mut s, r#"save_video(zeros([1, 3, 2, 8, 8]), "clip.avi")"#);
    assert!(e.contains("unknown video extension"), "{e}");
    assert_eq!(as_f64(eval(&mut s, "loaded_models().len()")), 2.0);
    // Nothing half-written was left in the output directory.
    let names: Vec<String> = std::fs::read_dir(out.path())
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(names.is_empty(), "{names:?}");
}

/// scripts/wan22_t2v.rhai: prompt -> umT5 -> high -> low -> VAE -> frames and
/// a GIF, on the built-in tiny models, with every model deleted after use.
#[test]
fn prompt_to_video_script_runs() {
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let trace_path = out_dir.path().join("t2v_trace.json");
    let run = common::baton_run_traced(
        "scripts/wan22_t2v.rhai",
        out_dir.path(),
        &trace_path,
        Some(cache.path()),
    );
    run.assert_ok();
    let stdout = &run.stdout;
    assert!(stdout.contains("video [1, 3, 9, 160, 160]"), "{stdout}");
    for stage in [
        "text encoder deleted",
        "both experts done and deleted",
        "VAE deleted",
    ] {
        let after = stdout.split(stage).nth(1).unwrap_or_default();
        assert!(after.contains("(no models loaded)"), "{stage}: {stdout}");
    }
    let o = out_dir.path();
    assert!(o.join("wan22_t2v.gif").metadata().unwrap().len() > 1000);
    assert!(o.join("wan22_t2v/frame_0008.png").exists());
    assert!(o.join("wan22_t2v_latent.safetensors").exists());
    let img = image::open(o.join("wan22_t2v/frame_0000.png")).unwrap();
    assert_eq!((img.width(), img.height()), (160, 160));

    // `baton plan` predicts the peak of the whole run (the VAE decode).
    use common::plan::{assert_close, measured_peak, plan_json, predicted_peak, read_json};
    let trace = read_json(&trace_path);
    let plan = plan_json("scripts/wan22_t2v.rhai", cache.path());
    let n = plan["predicted"].as_array().unwrap().len();
    assert_close(
        "wan22_t2v",
        predicted_peak(&plan, 0..n),
        measured_peak(&trace, 0.0, f64::MAX),
    );
}
