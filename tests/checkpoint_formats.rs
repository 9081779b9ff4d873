//! Every published way a Wan DiT is stored loads with the right numerics:
//! sharded sets (an index json, or a folder of shards such as diffusers'
//! `transformer/`), the diffusers layout (norm2/norm3 swapped), f16 files,
//! and fp8_scaled described only by the header's `_quantization_metadata`.
//! The files are built here from the tiny fixture model, and `baton inspect`
//! is run on each. Bad sets fail naming the file and the shard or key, and
//! leave nothing in the ledger.
mod common;

use candle_core::{DType, Device, Tensor};
use common::golden::{copy_tiny_config, predict_case, FORWARD_CASES, TINY_DIT};
use common::{as_f64, eval, eval_err};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Rhai: model `m`'s prediction on golden case 1 of the script's `c`.
fn case1(m: &str) -> String {
    predict_case(m, "c", "case1")
}

/// Writes `tensors` as shards: block 1 in the second file, the rest in the
/// first. Returns the shard names and the weight map.
fn write_shards(
    dir: &Path,
    stem: &str,
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> (Vec<String>, serde_json::Map<String, serde_json::Value>) {
    let names = vec![
        format!("{stem}-00001-of-00002.safetensors"),
        format!("{stem}-00002-of-00002.safetensors"),
    ];
    let mut parts: [HashMap<String, Tensor>; 2] = Default::default();
    let mut map = serde_json::Map::new();
    for (k, t) in tensors {
        let i = usize::from(k.contains("blocks.1."));
        parts[i].insert(k.clone(), t.clone());
        map.insert(k.clone(), names[i].clone().into());
    }
    for (part, name) in parts.iter().zip(&names) {
        let data: Vec<(&str, Tensor)> = part.iter().map(|(k, t)| (k.as_str(), t.clone())).collect();
        safetensors::serialize_to_file(
            data.iter().map(|(k, t)| (*k, t)),
            metadata.clone(),
            &dir.join(name),
        )
        .unwrap();
    }
    (names, map)
}

fn write_index(
    dir: &Path,
    stem: &str,
    map: &serde_json::Map<String, serde_json::Value>,
) -> PathBuf {
    let p = dir.join(format!("{stem}.safetensors.index.json"));
    let v = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": map });
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    p
}

fn inspect(path: &Path) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("inspect")
        .arg(path)
        .output()
        .expect("running baton inspect");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "inspect {}: {err}", path.display());
    out
}

/// rel L2 of `load_model(path)`'s forward on case 1 against the fixture's
/// f32 reference output, and against the single-file original model.
fn case1_errors(dir: &Path, path: &Path, dtype: &str) -> (f64, f64) {
    let mut s = common::session_with(None, dir);
    let v = eval(
        &mut s,
        &format!(
            r#"
            let c = load_tensors("{FORWARD_CASES}");
            let m = load_model("{}", #{{ dtype: "{dtype}" }});
            let y = {};
            delete_model(m);
            let o = load_model("{TINY_DIT}", #{{ dtype: "{dtype}" }});
            [rel_l2(y, c.case1_out), rel_l2(y, {})]
            "#,
            path.display(),
            case1("m"),
            case1("o")
        ),
    )
    .into_array()
    .unwrap();
    (as_f64(v[0].clone()), as_f64(v[1].clone()))
}

#[test]
fn sharded_by_index_and_by_folder_load_as_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::load_fixture("wan_tiny/original.safetensors");
    let (_, map) = write_shards(dir.path(), "diffusion_pytorch_model", &base, None);
    let index = write_index(dir.path(), "diffusion_pytorch_model", &map);
    copy_tiny_config(dir.path());
    for path in [index.as_path(), dir.path()] {
        let (to_ref, to_single) = case1_errors(dir.path(), path, "f32");
        assert!(to_ref <= 1e-4, "{}: {to_ref:.3e}", path.display());
        assert_eq!(to_single, 0.0, "{}", path.display());
        let out = inspect(path);
        assert!(out.contains("arch:       wan-dit"), "{out}");
        assert!(out.contains("shards:     2 files"), "{out}");
        assert!(out.contains("layers 2"), "{out}");
    }
}

/// A diffusers `transformer/` folder: diffusers key names (its norm2 is the
/// original norm3), sharded without an index, heads from config.json.
#[test]
fn diffusers_transformer_folder_matches_the_reference() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("transformer");
    std::fs::create_dir(&dir).unwrap();
    let base = common::load_fixture("wan_tiny/diffusers.safetensors");
    assert!(base.contains_key("blocks.0.norm2.weight"));
    write_shards(&dir, "diffusion_pytorch_model", &base, None);
    copy_tiny_config(&dir);
    let (to_ref, to_single) = case1_errors(root.path(), &dir, "f32");
    assert!(to_ref <= 1e-4, "{to_ref:.3e}");
    assert!(to_single <= 1e-5, "{to_single:.3e}");
    // Swapping the two norms back must break it: the test can fail.
    let mut swapped = base.clone();
    let n2 = swapped.remove("blocks.0.norm2.weight").unwrap();
    let w = (n2.ones_like().unwrap() * 3.0).unwrap();
    swapped.insert("blocks.0.norm2.weight".into(), w);
    let bad = root.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    write_shards(&bad, "m", &swapped, None);
    copy_tiny_config(&bad);
    let (changed, _) = case1_errors(root.path(), &bad, "f32");
    assert!(changed > 1e-3, "norm2 is not read: {changed:.3e}");
    let out = inspect(&dir);
    assert!(out.contains("layout:     diffusers"), "{out}");
}

#[test]
fn f16_file_matches_within_half_precision() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::load_fixture("wan_tiny/original.safetensors");
    let half: HashMap<String, Tensor> = base
        .iter()
        .map(|(k, t)| (k.clone(), t.to_dtype(DType::F16).unwrap()))
        .collect();
    let p = dir.path().join("wan_f16.safetensors");
    candle_core::safetensors::save(&half, &p).unwrap();
    copy_tiny_config(dir.path());
    let (to_ref, _) = case1_errors(dir.path(), &p, "f16");
    assert!(to_ref <= 2e-2, "{to_ref:.3e}");
    let (f32_from_f16, _) = case1_errors(dir.path(), &p, "f32");
    assert!(f32_from_f16 <= 2e-2, "{f32_from_f16:.3e}");
    let out = inspect(&p);
    assert!(out.contains("F16"), "{out}");
}

/// ComfyUI's newest encoding names the quantised layers only in the
/// header's `_quantization_metadata` (no `comfy_quant` tensors).
#[test]
fn fp8_scaled_with_header_quantization_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::load_fixture("wan_tiny/original.safetensors");
    let (mut fp8, mut reference) = (HashMap::new(), HashMap::new());
    let mut layers = serde_json::Map::new();
    for (k, w) in base {
        if k.starts_with("blocks.") && k.ends_with(".weight") && w.rank() == 2 {
            let (q, scale, deq) = common::quantise_fp8(&w);
            let stem = k.strip_suffix(".weight").unwrap();
            fp8.insert(
                format!("{stem}.weight_scale"),
                Tensor::new(scale, &Device::Cpu).unwrap(),
            );
            layers.insert(
                stem.into(),
                serde_json::json!({ "format": "float8_e4m3fn" }),
            );
            fp8.insert(k.clone(), q);
            reference.insert(k, deq);
        } else {
            fp8.insert(k.clone(), w.clone());
            reference.insert(k, w);
        }
    }
    let meta = serde_json::json!({ "format_version": "1.0", "layers": layers }).to_string();
    let metadata = HashMap::from([("_quantization_metadata".to_string(), meta)]);
    let p = dir.path().join("fp8_meta.safetensors");
    let data: Vec<(String, Tensor)> = fp8.into_iter().collect();
    safetensors::serialize_to_file(
        data.iter().map(|(k, t)| (k.as_str(), t)),
        Some(metadata),
        &p,
    )
    .unwrap();
    let r = dir.path().join("ref.safetensors");
    candle_core::safetensors::save(&reference, &r).unwrap();
    copy_tiny_config(dir.path());
    let mut s = common::session_with(None, dir.path());
    let d = as_f64(eval(
        &mut s,
        &format!(
            r#"
            let c = load_tensors("{FORWARD_CASES}");
            let q = load_model("{}", #{{ dtype: "f32" }});
            let r = load_model("{}", #{{ dtype: "f32" }});
            rel_l2({}, {})
            "#,
            p.display(),
            r.display(),
            case1("q"),
            case1("r")
        ),
    ));
    assert!(d <= 1e-4, "{d:.3e}");
    let out = inspect(&p);
    assert!(out.contains("F8_E4M3"), "{out}");
}

fn assert_fails_cleanly(dir: &Path, path: &Path, wants: &[&str]) {
    let mut s = common::session_with(None, dir);
    let err = eval_err(&mut s, &format!(r#"load_model("{}")"#, path.display()));
    for w in wants {
        assert!(err.contains(w), "'{w}' not in: {err}");
    }
    let left = eval(&mut s, "[vram().used, loaded_models().len()]")
        .into_array()
        .unwrap();
    assert_eq!(
        as_f64(left[0].clone()),
        0.0,
        "ledger not empty after: {err}"
    );
    assert_eq!(
        as_f64(left[1].clone()),
        0.0,
        "a model is registered after: {err}"
    );
}

#[test]
fn broken_sharded_sets_fail_naming_the_index_shard_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::load_fixture("wan_tiny/original.safetensors");
    let (names, map) = write_shards(dir.path(), "m", &base, None);
    let index = write_index(dir.path(), "m", &map);
    copy_tiny_config(dir.path());

    // The index names a shard that is not there.
    let mut missing = map.clone();
    missing.insert(
        "blocks.1.ffn.0.bias".into(),
        "m-00003-of-00002.safetensors".into(),
    );
    let idx = write_index(dir.path(), "missing", &missing);
    assert_fails_cleanly(
        dir.path(),
        &idx,
        &[
            "missing.safetensors.index.json",
            "m-00003-of-00002.safetensors",
            "blocks.1.ffn.0.bias",
        ],
    );

    // The index puts a tensor in a shard that does not hold it.
    let mut moved = map.clone();
    moved.insert("blocks.1.ffn.0.bias".into(), names[0].clone().into());
    let idx = write_index(dir.path(), "moved", &moved);
    assert_fails_cleanly(
        dir.path(),
        &idx,
        &[
            &names[0],
            "blocks.1.ffn.0.bias",
            "moved.safetensors.index.json",
        ],
    );

    // A shard cut short (an interrupted download).
    let cut = dir.path().join(&names[1]);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    assert_fails_cleanly(dir.path(), &index, &[&names[1], "truncated"]);
    std::fs::write(&cut, &bytes).unwrap();

    // A block missing from every shard: the model names the key.
    let mut short = base.clone();
    short.remove("blocks.1.cross_attn.k.weight");
    let sub = dir.path().join("short");
    std::fs::create_dir(&sub).unwrap();
    copy_tiny_config(&sub);
    let (_, m) = write_shards(&sub, "m", &short, None);
    let idx = write_index(&sub, "m", &m);
    assert_fails_cleanly(dir.path(), &idx, &["blocks.1.cross_attn.k.weight"]);

    // A shape that contradicts the inferred config.
    let mut wrong = base.clone();
    wrong.insert(
        "blocks.1.ffn.2.weight".into(),
        Tensor::zeros((48, 60), DType::F32, &Device::Cpu).unwrap(),
    );
    let sub = dir.path().join("wrong");
    std::fs::create_dir(&sub).unwrap();
    copy_tiny_config(&sub);
    write_shards(&sub, "m", &wrong, None);
    assert_fails_cleanly(dir.path(), &sub, &["blocks.1.ffn.2.weight", "shape"]);

    // Two shards holding the same tensor.
    let sub = dir.path().join("overlap");
    std::fs::create_dir(&sub).unwrap();
    copy_tiny_config(&sub);
    write_shards(&sub, "m", &base, None);
    candle_core::safetensors::save(&base, sub.join("extra.safetensors")).unwrap();
    assert_fails_cleanly(dir.path(), &sub, &["overlap"]);

    // Not a Wan DiT at all.
    let sub = dir.path().join("other");
    std::fs::create_dir(&sub).unwrap();
    copy_tiny_config(&sub);
    let other = HashMap::from([(
        "encoder.weight".to_string(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    )]);
    candle_core::safetensors::save(&other, sub.join("a.safetensors")).unwrap();
    assert_fails_cleanly(dir.path(), &sub, &["not a Wan DiT", "other"]);
}
