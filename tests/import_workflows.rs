//! `baton import`: the official Wan 2.2 ComfyUI templates become scripts
//! whose sampling settings are the workflow's widgets, whose models are
//! deleted after their last use, and (T2V, on the tiny models) that run with
//! one expert resident where the all-resident graph offloads.

use baton::import::{import_bytes, import_file, ImportOptions, Imported, SamplerSettings};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/comfy_workflows")
        .join(name)
}

fn import(name: &str, o: &ImportOptions) -> Imported {
    import_file(&fixture(name), o).unwrap_or_else(|e| panic!("importing {name}: {e}"))
}

fn param(imp: &Imported, name: &str) -> Value {
    imp.params
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no parameter {name} in {:?}", imp.params))
        .value
        .clone()
}

/// The settings a pass must have; shift compared to 1e-9 (the templates
/// store 8.000000000000002 from a float slider).
fn check(
    s: &SamplerSettings,
    steps: i64,
    start: i64,
    end: Option<i64>,
    cfg: f64,
    sampler: &str,
    shift: f64,
) {
    assert_eq!((s.steps, s.start, s.end), (steps, start, end), "{s:?}");
    assert_eq!(
        (s.cfg, s.sampler.as_str(), s.scheduler.as_str()),
        (cfg, sampler, "simple"),
        "{s:?}"
    );
    assert!((s.shift - shift).abs() < 1e-9, "{s:?}");
}

const T2V: &str = "video_wan2_2_14B_t2v.json";
const I2V: &str = "video_wan2_2_14B_i2v.json";
const TI2V: &str = "video_wan2_2_5B_ti2v.json";
const COMMUNITY: &str = "I2V-Wan-2.2-Lightning-runpod.json";

#[test]
fn t2v_sampling_settings_are_the_workflow_widgets() {
    let imp = import(T2V, &ImportOptions::default());
    // KSamplerAdvanced #57: enable, 774388746670969, randomize, 20, 3.5, euler, simple, 0, 10, enable
    // KSamplerAdvanced #58: disable, 0, fixed, 20, 3.5, euler, simple, 10, 10000, disable
    let [high, low] = imp.samplers.as_slice() else {
        panic!("{:?}", imp.samplers)
    };
    check(high, 20, 0, Some(10), 3.5, "euler", 8.0);
    check(low, 20, 10, None, 3.5, "euler", 8.0);
    assert_eq!(
        (high.seed, high.add_noise, high.leftover_noise),
        (Some(774388746670969), true, true)
    );
    assert_eq!(
        (low.seed, low.add_noise, low.leftover_noise),
        (None, false, false)
    );
    assert_eq!((high.model.as_str(), low.model.as_str()), ("high", "low"));
    for (name, v) in [
        ("steps", 20i64),
        ("split", 10),
        ("seed", 774388746670969),
        ("width", 1280),
        ("height", 704),
        ("length", 121),
    ] {
        assert_eq!(param(&imp, name), Value::from(v), "{name}");
    }
    assert!(param(&imp, "prompt")
        .as_str()
        .unwrap()
        .starts_with("A close-up of a young woman"));
    // The graph is exactly the two-expert pattern: the stdlib recipe runs it,
    // with the widget values written into the call.
    assert!(imp.two_stage && imp.coexisting.is_empty());
    let s = &imp.script;
    assert!(s.contains("import \"stdlib/wan22\" as wan;"), "{s}");
    assert!(
        s.contains("wan::two_stage(files.high, files.low, latent, #{"),
        "{s}"
    );
    for opt in [
        "steps: steps",
        "split: split",
        "cfg_high: 3.5",
        "cfg_low: 3.5",
        // The slider's 8.000000000000002 is 8.0 as the f32 the sampler uses.
        "shift: 8.0,",
        "seed: seed",
        "sampler: \"euler\"",
        "scheduler: \"simple\"",
    ] {
        assert!(s.contains(opt), "missing {opt} in\n{s}");
    }
    assert!(
        s.contains("let seed            = param(\"seed\", 774388746670969, \"Noise seed\");"),
        "{s}"
    );
    // The text encoder goes before the experts, the VAE after them.
    let at = |needle: &str| {
        s.find(needle)
            .unwrap_or_else(|| panic!("no {needle} in\n{s}"))
    };
    assert!(
        at("delete_model(umt5);") < at("wan::two_stage(")
            && at("wan::two_stage(") < at("load_model(files.vae")
    );
    assert!(at("let frames = decode(vae, latent);") < at("delete_model(vae);"));
    // Node ids in comments, the report at the top.
    assert!(
        s.contains("// #57 KSamplerAdvanced and #58 KSamplerAdvanced"),
        "{s}"
    );
    assert!(
        s.starts_with("//! ")
            && s.contains("// Order: load umt5, delete umt5, load high (in wan::two_stage)"),
        "{s}"
    );
}

#[test]
fn keep_resident_spells_out_both_passes_with_the_same_settings() {
    let imp = import(
        T2V,
        &ImportOptions {
            keep_resident: true,
            ..Default::default()
        },
    );
    assert!(!imp.two_stage);
    let s = &imp.script;
    assert!(!s.contains("delete_model("), "{s}");
    assert!(s.contains("latent = sample(high, latent, #{"), "{s}");
    for opt in [
        "steps: steps",
        "end: split",
        "start: split",
        "cfg: 3.5",
        "add_noise: true",
        "leftover_noise: true",
        "add_noise: false",
        "shift: 8.0,",
    ] {
        assert!(s.contains(opt), "missing {opt} in\n{s}");
    }
    assert_eq!(
        imp.samplers,
        import(T2V, &ImportOptions::default()).samplers
    );
}

#[test]
fn i2v_subgraph_is_inlined_and_its_turbo_switch_folded() {
    let imp = import(I2V, &ImportOptions::default());
    // enable_turbo_mode = true: LoRA models, 4 steps split at 2, cfg 1, shift 5.
    let [high, low] = imp.samplers.as_slice() else {
        panic!("{:?}", imp.samplers)
    };
    check(high, 4, 0, Some(2), 1.0, "euler", 5.0);
    check(low, 4, 2, None, 1.0, "euler", 5.0);
    assert_eq!(high.seed, Some(415617686755647));
    for (name, v) in [
        ("steps", 4),
        ("split", 2),
        ("width", 640),
        ("height", 640),
        ("length", 81),
    ] {
        assert_eq!(param(&imp, name), Value::from(v), "{name}");
    }
    let s = &imp.script;
    assert!(
        s.contains("lora_high: [files.high_lora, 1.0000000000000002]"),
        "{s}"
    );
    assert!(
        s.contains("high_lora: \"wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors\""),
        "{s}"
    );
    assert!(s.contains("// #129:98 WanImageToVideo"), "{s}");
    // WanImageToVideo becomes image_to_video; its image_cond rides with the positive.
    assert!(
        s.contains("let i2v = image_to_video(vae, #{ start_image: start_image, width: width, height: height, length: length });"),
        "{s}"
    );
    assert!(s.contains("image_cond: i2v.image_cond"), "{s}");
    assert!(!s.contains("throw"), "{s}");

    // The same workflow with the switch off: plain models, 20 steps, split 10, cfg 3.5.
    let mut json: Value = serde_json::from_slice(&std::fs::read(fixture(I2V)).unwrap()).unwrap();
    let inst = json["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["id"] == 129)
        .unwrap();
    let last = inst["widgets_values"].as_array().unwrap().len() - 1;
    inst["widgets_values"][last] = Value::Bool(false);
    let off = import_bytes(json.to_string().as_bytes(), I2V, &ImportOptions::default()).unwrap();
    let [high, low] = off.samplers.as_slice() else {
        panic!("{:?}", off.samplers)
    };
    check(high, 20, 0, Some(10), 3.5, "euler", 5.0);
    check(low, 20, 10, None, 3.5, "euler", 5.0);
    assert!(!off.script.contains("lora"), "{}", off.script);
}

#[test]
fn ti2v_5b_imports_as_text_to_video_with_its_bypassed_image() {
    let imp = import(TI2V, &ImportOptions::default());
    let [pass] = imp.samplers.as_slice() else {
        panic!("{:?}", imp.samplers)
    };
    // KSampler #3: 898471028164125, randomize, 20, 5, uni_pc, simple, 1
    check(pass, 20, 0, None, 5.0, "uni_pc", 8.0);
    assert_eq!((pass.seed, pass.add_noise), (Some(898471028164125), true));
    let s = &imp.script;
    // Wan22ImageToVideoLatent without its (bypassed) image: ti2v_latent, no mask.
    assert!(
        s.contains(
            "let ti2v = ti2v_latent(vae, #{ width: width, height: height, length: length });"
        ) && !s.contains("load_image"),
        "{s}"
    );
    assert!(
        s.contains("save_video(frames, \"video/ComfyUI.gif\", #{ fps: 24.0 });"),
        "{s}"
    );
    assert!(
        imp.report.contains("1 skipped") || imp.report.contains("2 skipped"),
        "{}",
        imp.report
    );
}

#[test]
fn unknown_nodes_are_listed_and_placeholders_need_allow_unknown() {
    let err = import_file(&fixture(COMMUNITY), &ImportOptions::default()).unwrap_err();
    for node in ["#83 RIFE VFI", "#82 VHS_VideoCombine"] {
        assert!(err.contains(node), "{node} missing from: {err}");
    }
    // ComfyUI-GGUF's loaders map to load_model (it reads .gguf files).
    assert!(!err.contains("GGUF"), "{err}");
    assert!(
        err.contains("2 node(s)") && err.contains("--allow-unknown"),
        "{err}"
    );
    assert!(
        !err.contains("UnloadModel"),
        "the memory node is known: {err}"
    );

    let imp = import(
        COMMUNITY,
        &ImportOptions {
            allow_unknown: true,
            ..Default::default()
        },
    );
    let [high, low] = imp.samplers.as_slice() else {
        panic!("{:?}", imp.samplers)
    };
    check(high, 5, 0, Some(2), 1.0, "uni_pc", 8.0);
    check(low, 5, 2, None, 1.0, "uni_pc", 8.0);
    assert_eq!(high.seed, Some(789));
    let s = &imp.script;
    assert!(s.contains("// #85 UnloadModel: dropped"), "{s}");
    assert!(
        s.contains("load_model(files.cliploader_gguf") && !s.contains("(UnetLoaderGGUF) has no"),
        "{s}"
    );
    assert!(
        s.contains("Wan2.2-I2V-A14B-HighNoise-Q8_0.gguf")
            && s.contains("umt5-xxl-encoder-Q5_K_M.gguf"),
        "{s}"
    );
    assert!(
        imp.report
            .contains("Memory nodes replaced by these lifetimes: #85 UnloadModel"),
        "{}",
        imp.report
    );
}

#[test]
fn bad_input_names_the_file_and_what_is_wrong() {
    let o = ImportOptions::default();
    let e = import_bytes(b"{\"nodes\": [", "broken.json", &o).unwrap_err();
    assert!(e.starts_with("broken.json: invalid JSON"), "{e}");
    let e = import_bytes(b"[1, 2]", "list.json", &o).unwrap_err();
    assert!(e.contains("list.json: not a ComfyUI workflow"), "{e}");
    let dangling = br#"{"nodes": [{"id": 1, "type": "SaveVideo", "inputs": [{"name": "video", "link": 7}], "widgets_values": ["x", "auto", "auto"]}], "links": []}"#;
    let e = import_bytes(dangling, "dangling.json", &o).unwrap_err();
    assert!(e.contains("dangling.json: node 1 names link 7"), "{e}");
    let e = import_file(
        &fixture(T2V),
        &ImportOptions {
            maps: vec![("nope.safetensors".into(), "x".into())],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        e.contains("--map nope.safetensors") && e.contains("wan_2.1_vae.safetensors"),
        "{e}"
    );
    let e = import_file(
        &fixture(T2V),
        &ImportOptions {
            param_defaults: vec![("stepz".into(), "4".into())],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.contains("--param stepz") && e.contains("steps"), "{e}");
    let e = import_file(
        &fixture(T2V),
        &ImportOptions {
            param_defaults: vec![("steps".into(), "four".into())],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.contains("--param steps=four: expected an integer"), "{e}");
    let e = import_file(&fixture("missing.json"), &o).unwrap_err();
    assert!(e.contains("missing.json"), "{e}");
}

/// A PNG as ComfyUI's SaveImage writes it: the API prompt in tEXt, the UI
/// workflow in iTXt (compressed, as PIL does for long text).
#[test]
fn workflow_comes_out_of_png_webp_and_mp4_metadata() {
    let ui = std::fs::read_to_string(fixture(T2V)).unwrap();
    let api = std::fs::read_to_string(fixture(COMMUNITY)).unwrap();
    let expected = import(T2V, &ImportOptions::default()).samplers;

    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, 1, 1);
        enc.set_color(png::ColorType::Rgb);
        // tEXt is Latin-1: ComfyUI's JSON there is ASCII with \u escapes.
        let ascii: String = api
            .chars()
            .map(|c| match c.is_ascii() {
                true => c.to_string(),
                false => c
                    .encode_utf16(&mut [0; 2])
                    .iter()
                    .map(|u| format!("\\u{u:04x}"))
                    .collect(),
            })
            .collect();
        enc.add_text_chunk("prompt".into(), ascii).unwrap();
        enc.add_itxt_chunk("workflow".into(), ui.clone()).unwrap();
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[1, 2, 3]).unwrap();
    }
    let from_png = import_bytes(&png_bytes, "out.png", &ImportOptions::default()).unwrap();
    assert_eq!(from_png.samplers, expected);

    // WebP: ComfyUI's EXIF fields read "workflow:{...}" and "prompt:{...}".
    let mut exif = b"Exif\0\0MM\0*".to_vec();
    exif.extend_from_slice(format!("prompt:{api}\0workflow:{ui}\0").as_bytes());
    let mut body = b"WEBP".to_vec();
    for (tag, data) in [
        (&b"VP8L"[..], &[0x2f, 0, 0, 0, 0][..]),
        (b"EXIF", &exif[..]),
    ] {
        body.extend_from_slice(tag);
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        if data.len() % 2 == 1 {
            body.push(0);
        }
    }
    let mut webp = b"RIFF".to_vec();
    webp.extend_from_slice(&(body.len() as u32).to_le_bytes());
    webp.extend_from_slice(&body);
    let from_webp = import_bytes(&webp, "out.webp", &ImportOptions::default()).unwrap();
    assert_eq!(from_webp.samplers, expected);

    // MP4: the tag sits in moov/udta/meta/ilst as a data atom.
    let atom = |kind: &[u8], payload: &[u8]| {
        let mut a = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        a.extend_from_slice(kind);
        a.extend_from_slice(payload);
        a
    };
    let mut data = vec![0, 0, 0, 1, 0, 0, 0, 0];
    data.extend_from_slice(ui.as_bytes());
    let tag = atom(
        b"----",
        &[atom(b"name", b"\0\0\0\0workflow"), atom(b"data", &data)].concat(),
    );
    let moov = atom(
        b"moov",
        &atom(
            b"udta",
            &atom(b"meta", &[vec![0; 4], atom(b"ilst", &tag)].concat()),
        ),
    );
    let mp4 = [
        atom(b"ftyp", b"isom\0\0\x02\0isomiso2mp41"),
        moov,
        atom(b"mdat", &[0; 16]),
    ]
    .concat();
    let from_mp4 = import_bytes(&mp4, "out.mp4", &ImportOptions::default()).unwrap();
    assert_eq!(from_mp4.samplers, expected);

    let e = import_bytes(
        &atom(b"ftyp", b"isom"),
        "bare.mp4",
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(e.contains("bare.mp4: no ComfyUI workflow"), "{e}");
}

fn baton(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running baton");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Imports T2V onto the built-in tiny models, small (64x64, 5 frames, 2
/// steps split at 1, through --param), and runs it under a budget that
/// holds one expert (145 MiB) but not two.
fn run_t2v(dir: &std::path::Path, extra: &[&str]) -> String {
    let wf = fixture(T2V);
    let mut args = vec!["import", wf.to_str().unwrap(), "-o", "t2v.rhai"];
    for m in [
        "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors=builtin:wan-tiny-high",
        "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors=builtin:wan-tiny-low",
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors=builtin:umt5-tiny",
        "wan_2.1_vae.safetensors=builtin:wan-vae-tiny",
    ] {
        args.extend(["--map", m]);
    }
    for p in ["width=64", "height=64", "length=5", "steps=2", "split=1"] {
        args.extend(["--param", p]);
    }
    args.extend(extra);
    let (ok, out, err) = baton(&args, dir);
    assert!(ok, "import failed: {err}");
    assert!(out.contains("wrote t2v.rhai"), "{out}");
    let (ok, out, err) = baton(
        &["run", "t2v.rhai", "--vram", "260MiB", "--out", "out"],
        dir,
    );
    assert!(ok, "run failed: {err}\n{out}");
    assert!(dir.join("out/video/ComfyUI.gif").is_file(), "{out}");
    out
}

fn offloaded(out: &str) -> u64 {
    let rest = out
        .split("offloaded at peak: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no offload line in {out}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn imported_t2v_runs_with_one_expert_resident_and_the_resident_graph_offloads() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_t2v(dir.path(), &[]);
    assert_eq!(offloaded(&out), 0, "{out}");
    let kept = tempfile::tempdir().unwrap();
    let out = run_t2v(kept.path(), &["--keep-resident"]);
    assert!(offloaded(&out) > 0, "{out}");
}

/// An API-format graph built here: `first` samples with A, then B, then A
/// again, so A must stay loaded while B is.
fn interleaved() -> String {
    let loader = |file: &str| {
        format!(
            r#"{{"class_type": "UNETLoader", "inputs": {{"unet_name": "{file}", "weight_dtype": "default"}}}}"#
        )
    };
    let pass = |model: &str, latent: &str| {
        format!(
            r#"{{"class_type": "KSampler", "inputs": {{"seed": 18446744073709551615, "steps": 4, "cfg": 1.0, "sampler_name": "euler",
                "scheduler": "simple", "denoise": 0.5, "model": ["{model}", 0], "positive": ["4", 0], "latent_image": ["{latent}", 0]}}}}"#
        )
    };
    format!(
        r#"{{"1": {a}, "2": {b}, "3": {{"class_type": "CLIPLoader", "inputs": {{"clip_name": "te.safetensors", "type": "wan"}}}},
            "4": {{"class_type": "CLIPTextEncode", "inputs": {{"text": "a fox", "clip": ["3", 0]}}}},
            "5": {{"class_type": "EmptyHunyuanLatentVideo", "inputs": {{"width": 64, "height": 64, "length": 5, "batch_size": 1}}}},
            "6": {p6}, "7": {p7}, "8": {p8},
            "9": {{"class_type": "VAELoader", "inputs": {{"vae_name": "vae.safetensors"}}}},
            "10": {{"class_type": "VAEDecode", "inputs": {{"samples": ["8", 0], "vae": ["9", 0]}}}},
            "11": {{"class_type": "SaveImage", "inputs": {{"filename_prefix": "x", "images": ["10", 0]}}}}}}"#,
        a = loader("a.safetensors"),
        b = loader("b.safetensors"),
        p6 = pass("1", "5"),
        p7 = pass("2", "6"),
        p8 = pass("1", "7"),
    )
}

#[test]
fn models_the_graph_needs_together_are_reported_and_commented() {
    let imp = import_bytes(
        interleaved().as_bytes(),
        "interleaved.json",
        &ImportOptions::default(),
    )
    .unwrap();
    assert_eq!(
        imp.coexisting,
        vec![("model".to_string(), "model_2".to_string())]
    );
    assert!(
        imp.report
            .contains("Large models resident together: model and model_2"),
        "{}",
        imp.report
    );
    let s = &imp.script;
    assert!(
        s.contains("// model and model_2 must both be resident here"),
        "{s}"
    );
    // The text encoder still goes as soon as the prompt is encoded.
    let at = |needle: &str| {
        s.find(needle)
            .unwrap_or_else(|| panic!("no {needle} in\n{s}"))
    };
    assert!(at("delete_model(text_encoder);") < at("load_model(files.model,"));
    assert!(at("delete_model(model_2);") < at("delete_model(model);"));
    // KSampler denoise 0.5 over 4 steps: ComfyUI schedules 8 and runs the last 4.
    let first = &imp.samplers[0];
    assert_eq!((first.steps, first.start, first.end), (8, 4, None));
    // A seed of 2^64-1 wraps to -1 (baton wraps back, as torch.manual_seed).
    assert_eq!(first.seed, Some(-1));
}

#[test]
fn files_are_found_in_a_comfyui_models_layout_under_the_roots() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("diffusion_models")).unwrap();
    std::fs::write(
        root.path()
            .join("diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"),
        b"",
    )
    .unwrap();
    std::fs::write(root.path().join("wan_2.1_vae.safetensors"), b"").unwrap();
    let o = ImportOptions {
        model_roots: vec![root.path().to_path_buf()],
        ..Default::default()
    };
    let imp = import(T2V, &o);
    let s = &imp.script;
    assert!(
        s.contains("high: \"diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors\","),
        "{s}"
    );
    assert!(s.contains("vae: \"wan_2.1_vae.safetensors\","), "{s}");
    assert!(
        imp.report
            .contains("low          wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors  (not found"),
        "{}",
        imp.report
    );
}

/// A shift is written as the shortest literal of the f32 the sampler uses
/// (ComfyUI's ModelSamplingSD3 rounds it to f32 too): the templates'
/// 8.000000000000002 becomes 8.0, and a value such as 5.1 stays 5.1, in
/// both the recipe call and the spelled-out passes.
#[test]
fn shift_is_written_as_the_shortest_f32_literal() {
    for keep_resident in [false, true] {
        let o = ImportOptions {
            keep_resident,
            ..Default::default()
        };
        let imp = import(T2V, &o);
        assert!(!imp.script.contains("8.000000000000002"), "{}", imp.script);
        assert!(imp.script.contains("shift: 8.0,"), "{}", imp.script);
        let mut json: Value =
            serde_json::from_slice(&std::fs::read(fixture(T2V)).unwrap()).unwrap();
        for n in json["nodes"].as_array_mut().unwrap() {
            if n["type"] == "ModelSamplingSD3" {
                n["widgets_values"][0] = Value::from(5.1);
            }
        }
        let imp = import_bytes(json.to_string().as_bytes(), T2V, &o).unwrap();
        assert!(imp.script.contains("shift: 5.1,"), "{}", imp.script);
        assert!(!imp.script.contains("5.099"), "{}", imp.script);
    }
}
