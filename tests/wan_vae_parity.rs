//! Wan 2.1 VAE decode/encode vs the diffusers golden fixtures
//! (tests/fixtures/wan_vae_tiny, copied from shared/fixtures/wan_vae_tiny; see
//! its README). The tiny model has the real module tree at base width 4.
//!
//! Tolerances: max abs error 1e-4 for decode (outputs up to ~2 in magnitude)
//! and 1e-5 for the encoder mean/logvar (~0.35 std), as the fixture README
//! suggests. The reference and Wan's own code agree exactly; ours differs only
//! by summation order (tiled im2col GEMMs, per-tap sums). Measured on the
//! 2-core EPYC dev box (f32), max abs: decode t1 2.6e-6, t3 9.1e-6, t4 5.8e-6
//! (unclamped and clamped alike, both key layouts), encode mean 4.8e-7,
//! logvar 8.0e-7, chunk intermediates <= 3.7e-6. A structural slip is far
//! outside: giving upsample3d's time conv the first chunk's frame as history
//! (instead of zeros) makes t3 off by 1.7.
mod common;

use std::collections::{BTreeMap, HashMap};

use baton::models::wan_vae::config::{infer, is_wan_vae, WanVaeConfig};
use baton::models::wan_vae::layout::{canonical_names, detect_layout, to_original, VaeLayout};
use baton::models::wan_vae::{denormalize, normalize, WanVae, LATENTS_MEAN, LATENTS_STD};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

const DECODE_TOL: f64 = 1e-4;
const ENCODE_TOL: f64 = 1e-5;

fn original_tensors() -> HashMap<String, Tensor> {
    common::load_fixture("wan_vae_tiny/original.safetensors")
}

fn key_mapping() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(common::fixture("wan_vae_tiny/key_mapping.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["diffusers_to_original"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// The same tensors under diffusers names (the fixture's diffusers.safetensors
/// is bit-identical to original.safetensors up to names; rebuilt here from
/// key_mapping.json to keep the repository small).
fn diffusers_tensors() -> HashMap<String, Tensor> {
    let orig = original_tensors();
    key_mapping()
        .into_iter()
        .map(|(d, o)| (d, orig[&o].clone()))
        .collect()
}

/// Renames a file's tensors to canonical names, as the loader will.
fn canonicalize(ts: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let names = canonical_names(ts.keys().map(String::as_str)).unwrap();
    names
        .into_iter()
        .map(|(canon, file)| (canon, ts[&file].clone()))
        .collect()
}

fn shapes(ts: &HashMap<String, Tensor>) -> BTreeMap<String, Vec<usize>> {
    ts.iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect()
}

fn build(ts: HashMap<String, Tensor>) -> WanVae {
    let ts = canonicalize(ts);
    let cfg = infer(&shapes(&ts)).expect("infer config");
    let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
    WanVae::new(&cfg, vb).expect("build WanVae")
}

fn cases() -> HashMap<String, Tensor> {
    common::load_fixture("wan_vae_tiny/cases.safetensors")
}

/// Asserts max |a - e| <= tol (and equal shapes, no NaN); returns the error.
fn assert_max_abs(actual: &Tensor, expected: &Tensor, tol: f64, what: &str) -> f64 {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape differs");
    let err = common::max_abs_diff(actual, expected);
    let nan = actual
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .any(|x| x.is_nan());
    println!(
        "{what}: max abs {err:.3e}, rel L2 {:.3e}",
        common::rel_l2(actual, expected)
    );
    assert!(!nan && err <= tol, "{what}: max abs {err:.3e} > {tol:.0e}");
    err
}

const DECODE_CASES: &[&str] = &["decode_t1_h4_w4", "decode_t3_h4_w6", "decode_t4_h2_w4"];

fn check_decode(vae: &WanVae, layout: &str) {
    let fx = cases();
    for case in DECODE_CASES {
        let z = &fx[&format!("{case}.latent")];
        let out = vae.decode_unclamped(z).unwrap();
        assert_max_abs(
            &out,
            &fx[&format!("{case}.video_unclamped")],
            DECODE_TOL,
            &format!("{layout} {case} unclamped"),
        );
        let out = vae.decode(z).unwrap();
        assert_max_abs(
            &out,
            &fx[&format!("{case}.video")],
            DECODE_TOL,
            &format!("{layout} {case} clamped"),
        );
        let max = out
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max <= 1.0, "clamped output reaches {max}");
    }
}

fn check_encode(vae: &WanVae, layout: &str) {
    let fx = cases();
    let (mu, logvar) = vae.encode_dist(&fx["encode_t5_h16_w16.video"]).unwrap();
    assert_max_abs(
        &mu,
        &fx["encode_t5_h16_w16.latent_mean"],
        ENCODE_TOL,
        &format!("{layout} encode mean"),
    );
    assert_max_abs(
        &logvar,
        &fx["encode_t5_h16_w16.latent_logvar"],
        ENCODE_TOL,
        &format!("{layout} encode logvar"),
    );
    let mu2 = vae.encode(&fx["encode_t5_h16_w16.video"]).unwrap();
    assert_eq!(common::max_abs_diff(&mu, &mu2), 0.0);
}

#[test]
fn decode_original_layout() {
    check_decode(&build(original_tensors()), "original");
}

#[test]
fn decode_diffusers_layout() {
    check_decode(&build(diffusers_tensors()), "diffusers");
}

#[test]
fn encode_both_layouts() {
    check_encode(&build(original_tensors()), "original");
    check_encode(&build(diffusers_tensors()), "diffusers");
}

#[test]
fn key_mapping_matches_fixture_for_all_keys() {
    let m = key_mapping();
    assert_eq!(m.len(), 194);
    for (d, o) in &m {
        assert_eq!(
            to_original(d).as_deref(),
            Some(o.as_str()),
            "diffusers key {d}"
        );
    }
    // Every original key is a fixture tensor and each appears once.
    let orig = original_tensors();
    let targets: std::collections::BTreeSet<_> = m.values().collect();
    assert_eq!(targets.len(), 194);
    assert!(targets.iter().all(|k| orig.contains_key(k.as_str())));

    let d = diffusers_tensors();
    assert_eq!(
        detect_layout(d.keys().map(String::as_str)),
        Some(VaeLayout::Diffusers)
    );
    assert_eq!(
        detect_layout(orig.keys().map(String::as_str)),
        Some(VaeLayout::Original)
    );
    // Bundling prefixes are stripped.
    let prefixed: Vec<String> = orig
        .keys()
        .map(|k| format!("first_stage_model.{k}"))
        .collect();
    let names = canonical_names(prefixed.iter().map(String::as_str)).unwrap();
    assert_eq!(names.len(), 194);
    assert_eq!(
        names["decoder.conv1.weight"],
        "first_stage_model.decoder.conv1.weight"
    );
    // An unknown diffusers key is an error naming it, not a silent drop.
    let mut bad: Vec<&str> = d.keys().map(String::as_str).collect();
    bad.push("decoder.up_blocks.0.mystery.weight");
    let err = canonical_names(bad.iter().copied()).unwrap_err();
    assert!(err.contains("decoder.up_blocks.0.mystery.weight"), "{err}");
}

#[test]
fn config_is_inferred_from_shapes() {
    let cfg = infer(&shapes(&original_tensors())).unwrap();
    assert_eq!(cfg, WanVaeConfig::wan21_width(4));
    // Same as the fixture's diffusers config.json.
    let text = std::fs::read_to_string(common::fixture("wan_vae_tiny/config.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["base_dim"], cfg.base_dim);
    assert_eq!(j["z_dim"], cfg.z_dim);
    assert_eq!(j["num_res_blocks"], cfg.num_res_blocks);
    assert_eq!(j["dim_mult"], serde_json::json!(cfg.dim_mult));
    assert_eq!(
        j["temperal_downsample"],
        serde_json::json!(cfg.temporal_downsample)
    );
    assert_eq!(cfg.num_params(), 243_583);
    let mean: Vec<f32> = serde_json::from_value(j["latents_mean"].clone()).unwrap();
    let std: Vec<f32> = serde_json::from_value(j["latents_std"].clone()).unwrap();
    assert_eq!(mean, LATENTS_MEAN);
    assert_eq!(std, LATENTS_STD);

    assert!(is_wan_vae(original_tensors().keys().map(String::as_str)));
    assert!(is_wan_vae(diffusers_tensors().keys().map(String::as_str)));
    let dit = common::load_fixture("wan_tiny/original.safetensors");
    assert!(!is_wan_vae(dit.keys().map(String::as_str)));
    assert!(infer(&shapes(&dit)).is_err());

    // A width change breaks inference with a message naming the tensor.
    let mut s = shapes(&original_tensors());
    s.insert(
        "decoder.upsamples.7.resample.1.weight".into(),
        vec![9, 16, 3, 3],
    );
    let err = infer(&s).unwrap_err();
    assert!(
        err.contains("decoder.upsamples.7.resample.1.weight"),
        "{err}"
    );
}

/// Per-chunk activations of the t3 decode vs diffusers forward hooks.
#[test]
fn decode_chunks_match_reference_intermediates() {
    let vae = build(original_tensors());
    let fx = cases();
    let dbg = common::load_fixture("wan_vae_tiny/decode_intermediates.safetensors");
    let mut seen: BTreeMap<String, Tensor> = BTreeMap::new();
    vae.decode_observed(
        &fx["decode_t3_h4_w6.latent"],
        false,
        &mut |name, chunk, t| {
            seen.insert(format!("{name}.call{chunk}"), t.clone());
            Ok(())
        },
    )
    .unwrap();
    // post_quant_conv runs once over all frames in the reference, per chunk here.
    let pq: Vec<Tensor> = (0..3)
        .map(|k| seen.remove(&format!("post_quant_conv.call{k}")).unwrap())
        .collect();
    let pq = Tensor::cat(&pq, 2).unwrap();
    let prefix = "decode_t3_h4_w6.";
    assert_max_abs(
        &pq,
        &dbg[&format!("{prefix}post_quant_conv.call0")],
        1e-5,
        "post_quant_conv",
    );
    let mut checked = 0;
    for (name, expected) in &dbg {
        let name = name.strip_prefix(prefix).unwrap();
        if name.starts_with("post_quant_conv") {
            continue;
        }
        let got = seen
            .get(name)
            .unwrap_or_else(|| panic!("no activation {name}"));
        assert_max_abs(got, expected, 1e-5, name);
        checked += 1;
    }
    assert_eq!(checked, 12);
}

/// The streaming iterator yields 1 frame then 4 per latent frame, and equals
/// the one-shot decode; decoding a prefix of the latents gives the prefix of
/// the video (the decode is causal in time).
#[test]
fn chunked_decode_is_streaming_and_causal() {
    let vae = build(original_tensors());
    let fx = cases();
    let z = &fx["decode_t4_h2_w4.latent"];
    let expected = &fx["decode_t4_h2_w4.video_unclamped"];
    let chunks: Vec<Tensor> = vae
        .decode_chunks(z, false)
        .unwrap()
        .collect::<candle_core::Result<_>>()
        .unwrap();
    let frames: Vec<usize> = chunks.iter().map(|c| c.dim(2).unwrap()).collect();
    assert_eq!(frames, vec![1, 4, 4, 4]);
    let whole = vae.decode_unclamped(z).unwrap();
    let streamed = Tensor::cat(&chunks, 2).unwrap();
    assert_eq!(common::max_abs_diff(&whole, &streamed), 0.0);

    for t in 1..=3 {
        let n = 1 + 4 * (t - 1);
        let out = vae.decode_unclamped(&z.narrow(2, 0, t).unwrap()).unwrap();
        assert_max_abs(
            &out,
            &expected.narrow(2, 0, n).unwrap(),
            DECODE_TOL,
            &format!("first {t} latent frames"),
        );
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let vae = build(original_tensors());
    let z = Tensor::zeros((1, 15, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let err = vae.decode(&z).unwrap_err().to_string();
    assert!(err.contains("[1, 15, 1, 2, 2]"), "{err}");
    let z = Tensor::zeros((16, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(vae.decode(&z).is_err());
    let v = Tensor::zeros((1, 3, 4, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let err = vae.encode(&v).unwrap_err().to_string();
    assert!(err.contains("1 + 4k"), "{err}");
    let v = Tensor::zeros((1, 3, 1, 12, 16), DType::F32, &Device::Cpu).unwrap();
    assert!(vae.encode(&v).is_err());
    assert!(normalize(&Tensor::zeros((1, 4, 1), DType::F32, &Device::Cpu).unwrap()).is_err());
}

#[test]
fn normalize_inverts_denormalize() {
    let x = Tensor::randn(0f32, 1.0, (1, 16, 2, 3, 3), &Device::Cpu).unwrap();
    let raw = denormalize(&x).unwrap();
    // Channel 7: mean 1.5508, std 2.0743.
    let (a, b) = (
        x.get(0).unwrap().get(7).unwrap().flatten_all().unwrap(),
        raw.get(0).unwrap().get(7).unwrap().flatten_all().unwrap(),
    );
    let want = ((a * 2.0743).unwrap() + 1.5508).unwrap();
    assert!(common::max_abs_diff(&b, &want) < 1e-5);
    let back = normalize(&raw).unwrap();
    assert!(common::max_abs_diff(&back, &x) < 1e-5);
}
