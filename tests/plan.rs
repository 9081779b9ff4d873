//! `baton plan`: a dry run that predicts a script's memory. These checks are
//! about what the plan says; its agreement with measured runs is checked
//! where those runs happen (`demo_pipeline.rs`, `vae_runtime.rs`).
mod common;

use common::plan::{held, plan_json};
use std::path::Path;

fn events(plan: &serde_json::Value) -> Vec<serde_json::Value> {
    plan["trace"]["events"].as_array().unwrap().clone()
}

#[test]
fn demo_plan_names_the_line_a_delete_would_fix() {
    let cache = tempfile::tempdir().unwrap();
    let plan = plan_json("scripts/demo.rhai", cache.path());
    let ev = events(&plan);
    // The ComfyUI way's second load is partial: beside 'high', the stem and
    // two read-ahead buffers fit, so all eight 16 MiB blocks stream.
    let low = ev
        .iter()
        .find(|e| e["at"] == "scripts/demo.rhai:37" && e["kind"] == "load")
        .expect("load of low at line 37");
    assert_eq!(held(low, "offloaded") >> 20, 128, "{low}");
    let warnings: Vec<String> = plan["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert!(
        w.starts_with("scripts/demo.rhai:37: 'low' loads partially"),
        "{w}"
    );
    assert!(w.contains("'high' (145 MiB) still resident"), "{w}");
    assert!(w.contains("delete_model(high)"), "{w}");
    // The sequential half never offloads, and peaks lower.
    let split = ev
        .iter()
        .position(|e| e["at"] == "scripts/demo.rhai:44")
        .unwrap();
    let pred: Vec<u64> = plan["predicted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let (comfy, seq) = (
        pred[..=split].iter().max().unwrap(),
        pred[split + 1..].iter().max().unwrap(),
    );
    assert!(
        seq + (40 << 20) < *comfy,
        "sequential {seq} vs ComfyUI way {comfy}"
    );
    assert!(ev[split + 1..].iter().all(|e| held(e, "offloaded") == 0));
}

#[test]
fn a_plan_writes_nothing_and_reports_where_the_script_fails() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("bad.rhai");
    std::fs::write(
        &script,
        r#"let m = load_model("builtin:wan-tiny-high", #{ name: "high" });
let x = empty_latent(#{ width: 64, height: 64, frames: 5 });
save_tensors(#{ x: x }, "planned.safetensors");
delete_model(m);
let y = sample(m, x, #{ positive: randn([1, 8, 4096], 1), steps: 2 });
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = common::baton(
        &[
            "plan".as_ref(),
            script.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ],
        None,
    );
    assert!(!run.ok, "{}", run.stdout);
    assert!(run.stdout.contains("load         high"), "{}", run.stdout);
    assert!(run.stdout.contains("delete       high"), "{}", run.stdout);
    assert!(
        run.stdout.contains("bad.rhai:5:") && run.stdout.contains("was deleted at"),
        "{}",
        run.stdout
    );
    assert!(
        !out.join("planned.safetensors").exists(),
        "a plan wrote a file"
    );
}

#[test]
fn a_plan_is_fast_on_a_full_size_pipeline_shape() {
    // 720p x 81 frames on the tiny models: the plan allocates stand-ins, not
    // the 1.1 GB video, and predicts the decode's working memory.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("big.rhai");
    std::fs::write(
        &script,
        r#"let te = load_model("builtin:umt5-tiny");
let pos = encode_text(te, "a fox");
delete_model(te);
let m = load_model("builtin:wan-tiny-high");
let x = empty_latent(#{ width: 1280, height: 720, frames: 81 });
x = sample(m, x, #{ positive: pos, steps: 20, cfg: 1.0 });
delete_model(m);
let vae = load_model("builtin:wan-vae-tiny");
let video = decode(vae, x);
print(video.shape);
"#,
    )
    .unwrap();
    let plan = plan_json(script.to_str().unwrap(), dir.path());
    let ev = events(&plan);
    let decode = ev.iter().find(|e| e["kind"] == "decode").unwrap();
    // 3 x 81 x 720 x 1280 f32 is 0.84 GiB; the decode holds it at least twice.
    assert!(decode["activations"].as_u64().unwrap() > 2 * 3 * 81 * 720 * 1280 * 4);
    let sample = ev.iter().find(|e| e["kind"] == "sample").unwrap();
    assert!(sample["activations"].as_u64().unwrap() > 75_600 * 4);
    let rss = ev.iter().map(|e| e["rss"].as_u64().unwrap()).max().unwrap();
    assert!(
        rss < 512 << 20,
        "the planning process itself held {rss} bytes"
    );
    assert!(Path::new(&script).exists());
}

#[test]
fn a_traced_run_is_recorded_and_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("small.rhai");
    std::fs::write(
        &script,
        r#"vram_budget("100MiB");
let te = load_model("builtin:umt5-tiny", #{ name: "te" });
let pos = encode_text(te, "a fox");
delete_model(te);
let vae = load_model("builtin:wan-vae-tiny", #{ name: "vae" });
offload_model(vae);
let v = decode(vae, zeros([1, 16, 2, 8, 8]));
delete_model(vae);
"#,
    )
    .unwrap();
    let trace = dir.path().join("t.json");
    let out = dir.path().join("out");
    let run = common::baton(
        &[
            "run".as_ref(),
            script.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--trace".as_ref(),
            trace.as_os_str(),
        ],
        None,
    );
    run.assert_ok();
    let t = common::plan::read_json(&trace);
    let kinds: Vec<String> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap(),
                e["model"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "budget ",
            "load te",
            "encode_text te",
            "delete te",
            "load vae",
            "offload vae",
            "reload vae",
            "decode vae",
            "delete vae"
        ]
    );
    // Every event carries the script line and the ledger after it.
    let ev = t["events"].as_array().unwrap();
    assert!(
        ev[1]["at"].as_str().unwrap().ends_with("small.rhai:2"),
        "{}",
        ev[1]
    );
    assert!(held(&ev[1], "resident") > 0);
    assert_eq!(held(&ev[3], "resident"), 0, "deleted");
    assert!(
        held(&ev[5], "host") > 0 && held(&ev[5], "resident") == 0,
        "offloaded to host"
    );
    assert!(!t["rss"].as_array().unwrap().is_empty(), "RSS samples");

    let png = dir.path().join("t.png");
    let draw = common::baton(
        &[
            "trace".as_ref(),
            trace.as_os_str(),
            "--png".as_ref(),
            png.as_os_str(),
            "--size".as_ref(),
            "800x400".as_ref(),
        ],
        None,
    );
    draw.assert_ok();
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (800, 400));
    // The first model's colour (te, blue) and the budget line (red) are drawn.
    let has = |f: &dyn Fn(&image::Rgb<u8>) -> bool| img.pixels().any(f);
    assert!(
        has(&|p| p[2] > 200 && p[0] < 150 && p[1] < 200),
        "no model band"
    );
    assert!(
        has(&|p| p[0] > 200 && p[1] < 60 && p[2] < 60),
        "no budget line"
    );

    // A bad file is a clear error.
    std::fs::write(dir.path().join("bad.json"), "{}").unwrap();
    let bad = common::baton(
        &[
            "trace".as_ref(),
            dir.path().join("bad.json").as_os_str(),
            "--png".as_ref(),
            png.as_os_str(),
        ],
        None,
    );
    assert!(
        !bad.ok && bad.stderr.contains("not a baton trace"),
        "{}",
        bad.stderr
    );
}
