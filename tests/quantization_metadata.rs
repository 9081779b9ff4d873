//! ComfyUI's newest fp8 encoding names its quantised layers in the header's
//! `_quantization_metadata`, and baton reads it: listed `float8_e4m3fn`
//! layers load as `fp8 · weight_scale`, unlisted layers as plain tensors
//! (a scale beside one is not applied, as in ComfyUI), and formats baton
//! does not read, or metadata that disagrees with the weights, are refused
//! naming the layer. The checkpoints are made here from the tiny model.
mod common;

use candle_core::{DType, Device, Tensor};
use common::golden::{copy_tiny_config, predict_case, FORWARD_CASES};
use common::{as_f64, eval, eval_err, session_with};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const PREFIX: &str = "model.diffusion_model.";

/// Writes `tensors` with `_quantization_metadata` = `meta` (raw text; none
/// when empty).
fn write(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>, meta: &str) -> PathBuf {
    let p = dir.join(name);
    let metadata = (!meta.is_empty())
        .then(|| HashMap::from([("_quantization_metadata".to_string(), meta.to_string())]));
    let data: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    safetensors::serialize_to_file(data, metadata, &p).unwrap();
    copy_tiny_config(dir);
    p
}

fn block_linear(k: &str, w: &Tensor) -> bool {
    k.starts_with("blocks.") && k.ends_with(".weight") && w.rank() == 2
}

/// Block 0's linears listed and scaled; every other block linear stored as
/// plain fp8 with a bogus `weight_scale` of 4 beside it that the metadata
/// does not list. Returns (file tensors, reference in f32, metadata).
fn mixed() -> (HashMap<String, Tensor>, HashMap<String, Tensor>, String) {
    let base = common::load_fixture("wan_tiny/original.safetensors");
    let (mut file, mut reference) = (HashMap::new(), HashMap::new());
    let mut layers = serde_json::Map::new();
    for (k, w) in base {
        if !block_linear(&k, &w) {
            file.insert(format!("{PREFIX}{k}"), w.clone());
            reference.insert(k, w);
            continue;
        }
        let stem = k.strip_suffix(".weight").unwrap().to_string();
        let bogus = Tensor::new(4f32, &Device::Cpu).unwrap();
        if k.starts_with("blocks.0.") {
            let (q, scale, deq) = common::quantise_fp8(&w);
            file.insert(format!("{PREFIX}{k}"), q);
            file.insert(
                format!("{PREFIX}{stem}.weight_scale"),
                Tensor::new(scale, &Device::Cpu).unwrap(),
            );
            layers.insert(
                format!("{PREFIX}{stem}"),
                serde_json::json!({ "format": "float8_e4m3fn" }),
            );
            reference.insert(k, deq);
        } else {
            let q = w.to_dtype(DType::F8E4M3).unwrap();
            reference.insert(k.clone(), q.to_dtype(DType::F32).unwrap());
            file.insert(format!("{PREFIX}{k}"), q);
            file.insert(format!("{PREFIX}{stem}.weight_scale"), bogus);
        }
    }
    assert!(!layers.is_empty() && reference.keys().any(|k| k.starts_with("blocks.1.")));
    let meta = serde_json::json!({ "format_version": "1.0", "layers": layers }).to_string();
    (file, reference, meta)
}

/// rel L2 of the prediction of `p` loaded at `dtype` against `reference`
/// (written to `dir/name`, loaded in f32) on golden case 1.
fn rel_err_against_reference(
    p: &Path,
    dtype: &str,
    reference: &HashMap<String, Tensor>,
    name: &str,
    dir: &Path,
) -> f64 {
    let r = dir.join(name);
    candle_core::safetensors::save(reference, &r).unwrap();
    let mut s = session_with(None, dir);
    as_f64(eval(
        &mut s,
        &format!(
            r#"
            let c = load_tensors("{FORWARD_CASES}");
            let q = load_model("{}", #{{ dtype: "{dtype}" }});
            let r = load_model("{}", #{{ dtype: "f32" }});
            rel_l2({}, {})
            "#,
            p.display(),
            r.display(),
            predict_case("q", "c", "case1"),
            predict_case("r", "c", "case1")
        ),
    ))
}

#[test]
fn the_metadata_decides_which_layers_are_scaled() {
    let dir = tempfile::tempdir().unwrap();
    let (file, reference, meta) = mixed();
    let p = write(dir.path(), "mixed.safetensors", &file, &meta);
    let d = rel_err_against_reference(&p, "f32", &reference, "reference.safetensors", dir.path());
    println!("listed layers scaled, unlisted not: rel L2 {d:.3e}");
    assert!(d <= 1e-5, "{d:.3e}");
    // The same with the weights kept fp8 resident (each linear dequantises
    // at forward time, reading the scales the metadata left).
    let d8 = rel_err_against_reference(&p, "fp8", &reference, "reference.safetensors", dir.path());
    println!("fp8 resident: rel L2 {d8:.3e}");
    assert!(d8 <= 1e-4, "{d8:.3e}");

    // Applying the bogus scales (what ignoring the metadata did) gives a
    // different model, so the comparison above can tell.
    let mut scaled = reference.clone();
    for (k, w) in scaled.iter_mut() {
        if block_linear(k, w) && !k.starts_with("blocks.0.") {
            *w = (&*w * 4.0).unwrap();
        }
    }
    let wrong = rel_err_against_reference(&p, "f32", &scaled, "scaled.safetensors", dir.path());
    assert!(wrong > 1e-2, "the bogus scales should matter: {wrong:.3e}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("inspect")
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let listed = meta.matches("float8_e4m3fn").count();
    assert!(
        text.contains(&format!("quantised:  {listed} layers float8_e4m3fn (as _quantization_metadata / comfy_quant list them)")),
        "{text}"
    );
}

/// Loads `tensors` written with `meta`; must fail with every one of `want`
/// in the message, leaving nothing loaded.
fn refused(tensors: &HashMap<String, Tensor>, meta: &str, want: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad.safetensors", tensors, meta);
    let mut s = session_with(None, dir.path());
    let e = eval_err(&mut s, &format!("load_model(\"{}\")", p.display()));
    for w in want {
        assert!(e.contains(w), "missing {w:?} in: {e}");
    }
    assert_eq!(as_f64(eval(&mut s, "vram().models.len()")), 0.0);
}

#[test]
fn a_format_baton_does_not_read_is_refused_naming_the_layer() {
    let (mut file, _, _) = mixed();
    let k = format!("{PREFIX}blocks.0.ffn.0");
    let w = file[&format!("{k}.weight")].to_dtype(DType::F32).unwrap();
    let int8 = (w * 100.0).unwrap().to_dtype(DType::U8).unwrap();
    file.insert(format!("{k}.weight"), int8);
    let meta = serde_json::json!({ "format_version": "1.0", "layers": {
        &k: { "format": "int8_blockwise", "group_size": 128 }
    }})
    .to_string();
    refused(
        &file,
        &meta,
        &["blocks.0.ffn.0", "int8_blockwise", "float8_e4m3fn"],
    );
}

#[test]
fn metadata_that_disagrees_with_the_weights_is_refused() {
    let base = common::load_fixture("wan_tiny/original.safetensors");
    let plain: HashMap<String, Tensor> = base.into_iter().collect();
    let layer = "blocks.0.self_attn.q";
    let listed = serde_json::json!({ "format_version": "1.0", "layers": {
        layer: { "format": "float8_e4m3fn" }
    }})
    .to_string();
    // Listed as fp8, stored as f32.
    refused(&plain, &listed, &[layer, "stored as F32"]);
    // Listed as fp8, no scale.
    let mut no_scale = plain.clone();
    let w = no_scale[&format!("{layer}.weight")]
        .to_dtype(DType::F8E4M3)
        .unwrap();
    no_scale.insert(format!("{layer}.weight"), w);
    refused(&no_scale, &listed, &[layer, "weight_scale"]);
    // A layer the model has no place for, and text that is not JSON.
    let ghost =
        serde_json::json!({ "layers": { "blocks.0.nope.x": { "format": "float8_e4m3fn" } } })
            .to_string();
    refused(&plain, &ghost, &["blocks.0.nope.x"]);
    refused(
        &plain,
        "{ not json",
        &["_quantization_metadata", "not valid JSON"],
    );
    let future = serde_json::json!({ "format_version": "2.0", "layers": {} }).to_string();
    refused(&plain, &future, &["format_version"]);
}

/// A `<layer>.comfy_quant` record: the format as JSON bytes.
fn record(format: &str) -> Tensor {
    let bytes = serde_json::json!({ "format": format })
        .to_string()
        .into_bytes();
    let n = bytes.len();
    Tensor::from_vec(bytes, n, &Device::Cpu).unwrap()
}

/// The per-layer form (`comfy_quant` tensors, no header metadata) follows
/// the same rule: listed layers scaled, a stray scale not applied, a format
/// baton does not read refused naming the layer and the record.
#[test]
fn comfy_quant_records_follow_the_same_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (mut file, reference, meta) = mixed();
    let listed: serde_json::Value = serde_json::from_str(&meta).unwrap();
    for layer in listed["layers"].as_object().unwrap().keys() {
        file.insert(format!("{layer}.comfy_quant"), record("float8_e4m3fn"));
    }
    let p = write(dir.path(), "records.safetensors", &file, "");
    let d = rel_err_against_reference(&p, "f32", &reference, "reference.safetensors", dir.path());
    println!("comfy_quant records: rel L2 {d:.3e}");
    assert!(d <= 1e-5, "{d:.3e}");

    file.insert(
        format!("{PREFIX}blocks.1.ffn.0.comfy_quant"),
        record("nvfp4"),
    );
    refused(&file, "", &["blocks.1.ffn.0", "nvfp4", "comfy_quant"]);
}
