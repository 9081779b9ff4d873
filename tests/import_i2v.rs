//! `baton import` of ComfyUI's image-to-video nodes: a subgraph input whose
//! value only the inner widget holds, `clip_vision` inputs (left unconnected
//! by Wan 2.2; connected, a clear error), `LoadImage` as the recipe
//! parameters `image` and `end_image`, `WanFirstLastFrameToVideo`, and the
//! TI2V-5B template with its start image switched on. The imported
//! first-last-frame and TI2V scripts run on the built-in tiny models.
mod common;

use baton::import::{import_bytes, import_file, ImportOptions, Imported};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

fn workflow(name: &str) -> PathBuf {
    common::fixture(&format!("comfy_workflows/{name}"))
}

fn read(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(workflow(name)).unwrap()).unwrap()
}

fn node(nodes: &mut Value, id: i64) -> &mut Value {
    nodes
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no node {id}"))
}

fn param(imp: &Imported, name: &str) -> Value {
    imp.params
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no parameter {name} in {:?}", imp.params))
        .value
        .clone()
}

/// The official I2V template's subgraph instance (#129) promotes its inner
/// widgets; a template saved by another frontend version may not, and then
/// the inner widget's own value is the value (ComfyUI runs with it).
#[test]
fn a_subgraph_input_without_a_value_takes_the_inner_widget() {
    let name = "video_wan2_2_14B_i2v.json";
    // Only clip_name left unpromoted, the inner CLIPLoader holding its own file.
    let mut wf = read(name);
    let inst = node(&mut wf["nodes"], 129);
    let proxies = inst["properties"]["proxyWidgets"].as_array_mut().unwrap();
    let k = proxies.iter().position(|p| p[1] == "clip_name").unwrap();
    proxies.remove(k);
    inst["widgets_values"].as_array_mut().unwrap().remove(k);
    let sub = &mut wf["definitions"]["subgraphs"][0]["nodes"];
    node(sub, 84)["widgets_values"][0] = json!("umt5_only_inside.safetensors");
    let imp = import_bytes(wf.to_string().as_bytes(), name, &ImportOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        imp.script.contains("\"umt5_only_inside.safetensors\""),
        "{}",
        imp.script
    );

    // Nothing promoted at all: every subgraph input takes its inner widget.
    let mut wf = read(name);
    let inst = node(&mut wf["nodes"], 129);
    inst["widgets_values"] = json!([]);
    inst["properties"]["proxyWidgets"] = json!([]);
    let imp = import_bytes(wf.to_string().as_bytes(), name, &ImportOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    for (p, v) in [
        ("width", json!(640)),
        ("height", json!(640)),
        ("length", json!(81)),
    ] {
        assert_eq!(param(&imp, p), v, "{p}");
    }
    assert!(
        imp.script
            .contains("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"),
        "{}",
        imp.script
    );
    // Inner PrimitiveBoolean #131 is true: the turbo LoRAs, 4 steps.
    assert_eq!(imp.samplers[0].steps, 4, "{:?}", imp.samplers);
}

/// A Wan 2.2 first-last-frame workflow in ComfyUI's API format (two
/// experts, two LoadImage nodes, no CLIP vision).
fn flf_api() -> Value {
    json!({
        "1": { "class_type": "UNETLoader", "inputs": { "unet_name": "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "weight_dtype": "default" } },
        "2": { "class_type": "UNETLoader", "inputs": { "unet_name": "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", "weight_dtype": "default" } },
        "3": { "class_type": "ModelSamplingSD3", "inputs": { "model": ["1", 0], "shift": 8.0 } },
        "4": { "class_type": "ModelSamplingSD3", "inputs": { "model": ["2", 0], "shift": 8.0 } },
        "5": { "class_type": "CLIPLoader", "inputs": { "clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan", "device": "default" } },
        "6": { "class_type": "CLIPTextEncode", "inputs": { "text": "a cat turns its head", "clip": ["5", 0] } },
        "7": { "class_type": "CLIPTextEncode", "inputs": { "text": "blurry", "clip": ["5", 0] } },
        "8": { "class_type": "VAELoader", "inputs": { "vae_name": "wan_2.1_vae.safetensors" } },
        "9": { "class_type": "LoadImage", "inputs": { "image": "first.png" } },
        "10": { "class_type": "LoadImage", "inputs": { "image": "last.png" } },
        "11": { "class_type": "WanFirstLastFrameToVideo", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "vae": ["8", 0],
            "start_image": ["9", 0], "end_image": ["10", 0],
            "width": 64, "height": 48, "length": 9, "batch_size": 1 } },
        "12": { "class_type": "KSamplerAdvanced", "inputs": {
            "model": ["3", 0], "add_noise": "enable", "noise_seed": 7, "steps": 4, "cfg": 3.5,
            "sampler_name": "euler", "scheduler": "simple", "positive": ["11", 0], "negative": ["11", 1],
            "latent_image": ["11", 2], "start_at_step": 0, "end_at_step": 2, "return_with_leftover_noise": "enable" } },
        "13": { "class_type": "KSamplerAdvanced", "inputs": {
            "model": ["4", 0], "add_noise": "disable", "noise_seed": 0, "steps": 4, "cfg": 3.5,
            "sampler_name": "euler", "scheduler": "simple", "positive": ["11", 0], "negative": ["11", 1],
            "latent_image": ["12", 0], "start_at_step": 2, "end_at_step": 10000, "return_with_leftover_noise": "disable" } },
        "14": { "class_type": "VAEDecode", "inputs": { "samples": ["13", 0], "vae": ["8", 0] } },
        "15": { "class_type": "SaveImage", "inputs": { "images": ["14", 0], "filename_prefix": "flf" } }
    })
}

#[test]
fn first_last_frame_imports_with_both_images_as_parameters() {
    let wf = flf_api();
    let imp = import_bytes(
        wf.to_string().as_bytes(),
        "flf.json",
        &ImportOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(param(&imp, "image"), json!("first.png"));
    assert_eq!(param(&imp, "end_image"), json!("last.png"));
    let s = &imp.script;
    assert!(s.contains("let start_image = load_image(image);"), "{s}");
    assert!(s.contains("let end_frame = load_image(end_image);"), "{s}");
    assert!(
        s.contains("first_last_to_video(vae, #{ start_image: start_image, end_image: end_frame, width: width, height: height, length: length });"),
        "{s}"
    );
    // The two passes (one wan::two_stage) get the image conditioning, and
    // nothing is left unsupported.
    assert!(
        s.contains("positive: positive, negative: negative, image_cond: i2v.image_cond,"),
        "{s}"
    );
    assert!(!s.contains("throw"), "{s}");
}

/// Wan 2.1's I2V fed a CLIP image embedding to these nodes; Wan 2.2 leaves
/// the input unconnected, and a connected one is named, not ignored.
#[test]
fn a_connected_clip_vision_input_is_a_clear_error() {
    let mut wf = flf_api();
    wf["20"] = json!({ "class_type": "CLIPVisionLoader", "inputs": { "clip_name": "clip_vision_h.safetensors" } });
    wf["21"] = json!({ "class_type": "CLIPVisionEncode", "inputs": { "clip_vision": ["20", 0], "image": ["9", 0], "crop": "none" } });
    wf["11"]["inputs"]["clip_vision_start_image"] = json!(["21", 0]);
    let o = ImportOptions {
        allow_unknown: true,
        ..Default::default()
    };
    let e = import_bytes(wf.to_string().as_bytes(), "flf.json", &o).unwrap_err();
    assert!(
        e.contains("#11 WanFirstLastFrameToVideo") && e.contains("clip_vision"),
        "{e}"
    );
}

/// `baton import` with `--map` and `--param`, then `baton run`.
fn import_and_run(
    wf: &Path,
    maps: &[&str],
    params: &[String],
    dir: &Path,
    cache: &Path,
) -> (String, common::BatonRun) {
    let script = dir.join("imported.rhai");
    let mut args: Vec<OsString> = vec![
        "import".into(),
        wf.into(),
        "-o".into(),
        script.clone().into(),
    ];
    for m in maps {
        args.extend(["--map".into(), (*m).into()]);
    }
    for p in params {
        args.extend(["--param".into(), p.into()]);
    }
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    common::baton(&refs, Some(cache)).assert_ok();
    let text = std::fs::read_to_string(&script).unwrap();
    let out = dir.join("out");
    let run = common::baton(
        &[
            "run".as_ref(),
            script.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--allow-path".as_ref(),
            env!("CARGO_MANIFEST_DIR").as_ref(),
        ],
        Some(cache),
    );
    (text, run)
}

fn fixture_image(name: &str) -> String {
    format!(
        "{}/tests/fixtures/wan_i2v/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn imported_first_last_frame_runs_on_the_tiny_experts() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("flf.json");
    std::fs::write(&wf, flf_api().to_string()).unwrap();
    let (_, run) = import_and_run(
        &wf,
        &[
            "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors=builtin:wan-tiny-i2v-high",
            "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors=builtin:wan-tiny-i2v-low",
            "umt5_xxl_fp8_e4m3fn_scaled.safetensors=builtin:umt5-tiny",
            "wan_2.1_vae.safetensors=builtin:wan-vae-tiny",
        ],
        &[
            "steps=2".into(),
            "split=1".into(),
            format!("image={}", fixture_image("start.png")),
            format!("end_image={}", fixture_image("end.png")),
        ],
        dir.path(),
        cache.path(),
    );
    run.assert_ok();
    let (del, load) = (
        run.stderr.find("deleted high"),
        run.stderr.find("loaded low"),
    );
    assert!(
        matches!((del, load), (Some(d), Some(l)) if d < l),
        "the high expert goes first:\n{}",
        run.stderr
    );
    // 9 frames decoded and written.
    let pngs = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("flf_")
        })
        .count();
    assert_eq!(pngs, 9);
}

/// The official TI2V-5B template bypasses its LoadImage; switched on, the
/// image becomes the clean first latent frame and its mask rides with the
/// latent into the sampler.
#[test]
fn ti2v_template_with_its_image_switched_on_runs() {
    let name = "video_wan2_2_5B_ti2v.json";
    let mut wf = read(name);
    node(&mut wf["nodes"], 56)["mode"] = json!(0);
    let imp = import_bytes(wf.to_string().as_bytes(), name, &ImportOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(param(&imp, "image"), json!("example.png"));
    let s = &imp.script;
    assert!(
        s.contains("let ti2v = ti2v_latent(vae, #{ start_image: start_image, width: width, height: height, length: length });"),
        "{s}"
    );
    assert!(s.contains("noise_mask: ti2v.noise_mask"), "{s}");
    // The file as it is, bypassed: no mask (checked beside its settings in import_workflows.rs).
    let plain = import_file(&workflow(name), &ImportOptions::default()).unwrap();
    assert!(!plain.script.contains("noise_mask"), "{}", plain.script);

    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, wf.to_string()).unwrap();
    let (_, run) = import_and_run(
        &path,
        &[
            "wan2.2_ti2v_5B_fp16.safetensors=builtin:wan-tiny-ti2v",
            "umt5_xxl_fp8_e4m3fn_scaled.safetensors=builtin:umt5-tiny",
            "wan2.2_vae.safetensors=builtin:wan22-vae-tiny",
        ],
        &[
            "width=96".into(),
            "height=64".into(),
            "length=5".into(),
            "steps=2".into(),
            format!("image={}", fixture_image("ti2v_start.png")),
        ],
        dir.path(),
        cache.path(),
    );
    run.assert_ok();
    assert!(
        dir.path().join("out/video/ComfyUI.gif").exists(),
        "{}",
        run.stdout
    );
}
