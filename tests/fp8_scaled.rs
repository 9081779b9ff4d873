//! ComfyUI fp8_scaled checkpoints load, in both of ComfyUI's encodings: the
//! legacy `scaled_fp8` marker with `<layer>.scale_weight`, and the newer
//! `<layer>.comfy_quant` record with `<layer>.weight_scale`. The files are
//! built here from the tiny fixture model (every block linear weight
//! quantised to F8_E4M3 with a per-tensor scale, as ComfyUI does), and the
//! reference is the same weights dequantised (`fp8 · scale`) in f32.
mod common;

use candle_core::{DType, Device, Tensor};
use common::golden::{copy_tiny_config, predict_case, FORWARD_CASES};
use common::{as_f64, eval, run};
use std::collections::HashMap;
use std::path::Path;

/// Rhai: model `m`'s prediction on golden case 1 of the script's `c`.
fn case1(m: &str) -> String {
    predict_case(m, "c", "case1")
}

/// (fp8 file tensors, f32 reference tensors) for one encoding.
fn quantised(legacy: bool) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    quantised_linears(legacy, true)
}

/// `quantised`, with every linear weight quantised rather than only the
/// blocks' when `blocks_only` is false (the tiny model's stem outweighs
/// its blocks, unlike a real one's).
fn quantised_linears(
    legacy: bool,
    blocks_only: bool,
) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let base = common::load_fixture("wan_tiny/original.safetensors");
    let (mut fp8, mut reference) = (HashMap::new(), HashMap::new());
    for (k, w) in base {
        let linear =
            (k.starts_with("blocks.") || !blocks_only) && k.ends_with(".weight") && w.rank() == 2;
        if !linear {
            fp8.insert(format!("model.diffusion_model.{k}"), w.clone());
            reference.insert(k, w);
            continue;
        }
        let (q, scale, deq) = common::quantise_fp8(&w);
        let stem = k.strip_suffix(".weight").unwrap();
        let p = "model.diffusion_model.";
        if legacy {
            fp8.insert(
                format!("{p}{stem}.scale_weight"),
                Tensor::new(&[scale], &Device::Cpu).unwrap(),
            );
        } else {
            fp8.insert(
                format!("{p}{stem}.weight_scale"),
                Tensor::new(scale, &Device::Cpu).unwrap(),
            );
            let rec = br#"{"format": "float8_e4m3fn"}"#.to_vec();
            let n = rec.len();
            fp8.insert(
                format!("{p}{stem}.comfy_quant"),
                Tensor::from_vec(rec, n, &Device::Cpu).unwrap(),
            );
        }
        fp8.insert(format!("{p}{k}"), q);
        reference.insert(k, deq);
    }
    if legacy {
        let marker = Tensor::zeros(0, DType::F8E4M3, &Device::Cpu).unwrap();
        fp8.insert("scaled_fp8".into(), marker);
    }
    (fp8, reference)
}

fn save(dir: &Path, name: &str, t: &HashMap<String, Tensor>) -> String {
    let p = dir.join(name);
    candle_core::safetensors::save(t, &p).unwrap();
    copy_tiny_config(dir);
    p.display().to_string()
}

#[test]
fn both_fp8_scaled_encodings_match_the_dequantised_reference() {
    for legacy in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (fp8, reference) = quantised(legacy);
        let fp8_path = save(dir.path(), "fp8.safetensors", &fp8);
        let ref_path = save(dir.path(), "ref.safetensors", &reference);
        let mut s = common::session_with(None, dir.path());
        run(
            &mut s,
            &format!(
                r#"
                let c = load_tensors("{FORWARD_CASES}");
                let r = load_model("{ref_path}", #{{ name: "ref" }});
                let q32 = load_model("{fp8_path}", #{{ name: "q32", dtype: "f32" }});
                let q = load_model("{fp8_path}", #{{ name: "q" }});
                let want = {p_r};
                "#,
                p_r = case1("r")
            ),
        );
        let v = eval(
            &mut s,
            &format!(
                r#"[rel_l2({}, want),
                    rel_l2({}, want),
                    rel_l2(want, c.case1_out), q.dtype]"#,
                case1("q32"),
                case1("q")
            ),
        )
        .into_array()
        .unwrap();
        let (exact, bf16, quant) = (
            as_f64(v[0].clone()),
            as_f64(v[1].clone()),
            as_f64(v[2].clone()),
        );
        let dtype = v[3].clone().into_string().unwrap();
        println!(
            "legacy {legacy}: f32 resident {exact:.2e}, default ({dtype}) {bf16:.2e}; \
             fp8 quantisation itself moves the output by {quant:.2e}"
        );
        // Dequantised in f32 and kept in f32: the same weights as the reference.
        assert!(exact <= 1e-6, "legacy {legacy}: {exact:.3e}");
        // The default keeps fp8 files in bf16 (2 bytes a weight): bf16 rounding only.
        assert_eq!(dtype, "bf16");
        assert!(bf16 <= 2e-2, "legacy {legacy}: {bf16:.3e}");
        // And fp8 really was applied (the reference is not the original model).
        assert!(quant > 1e-4, "quantisation changed nothing: {quant:.3e}");
    }
}

/// Streamed blocks dequantise as they stream in: a partly offloaded fp8
/// model gives the resident model's output exactly.
#[test]
fn streamed_fp8_blocks_dequantise_too() {
    let dir = tempfile::tempdir().unwrap();
    let (fp8, _) = quantised(false);
    let p = save(dir.path(), "fp8.safetensors", &fp8);
    let mut s = common::session_with(None, dir.path());
    let d = as_f64(eval(
        &mut s,
        &format!(
            r#"
            let c = load_tensors("{FORWARD_CASES}");
            let a = load_model("{p}", #{{ name: "a", dtype: "f32" }});
            let want = {p_a};
            delete_model(a);
            vram_budget(300000);
            let b = load_model("{p}", #{{ name: "b", dtype: "f32" }});
            if b.offloaded_bytes == 0 {{ throw "expected a partial load"; }}
            rel_l2({p_b}, want)
            "#,
            p_a = case1("a"),
            p_b = case1("b")
        ),
    ));
    assert_eq!(d, 0.0);
}

/// `dtype: "fp8"` keeps the F8_E4M3 weights (1 byte each) and dequantises
/// each layer at forward time: the output matches the dequantised f32
/// reference, the ledger counts 1 byte per quantised weight, streamed
/// blocks work the same way, and LoRAs are refused.
#[test]
fn fp8_resident_dequantises_per_layer() {
    for legacy in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (fp8, reference) = quantised(legacy);
        let fp8_path = save(dir.path(), "fp8.safetensors", &fp8);
        let ref_path = save(dir.path(), "ref.safetensors", &reference);
        // Bytes the model should hold: quantised weights at 1 byte, every
        // other tensor (norms, biases, scales) in f32, the CPU compute dtype.
        let want: usize = fp8
            .iter()
            .filter(|(k, _)| k.as_str() != "scaled_fp8" && !k.ends_with(".comfy_quant"))
            .map(|(_, t)| match t.dtype() {
                DType::F8E4M3 => t.elem_count(),
                _ => 4 * t.elem_count(),
            })
            .sum();
        let mut s = common::session_with(None, dir.path());
        let v = eval(
            &mut s,
            &format!(
                r#"
                let c = load_tensors("{FORWARD_CASES}");
                let r = load_model("{ref_path}", #{{ name: "ref" }});
                let want = {p_r};
                delete_model(r);
                let q = load_model("{fp8_path}", #{{ name: "q", dtype: "fp8" }});
                let got = {p_q};
                let bytes = q.bytes;
                let dt = q.dtype;
                delete_model(q);
                vram_budget(bytes - 10000);
                let p = load_model("{fp8_path}", #{{ name: "p", dtype: "fp8" }});
                let streamed = p.offloaded_bytes;
                [rel_l2(got, want), bytes, dt, streamed,
                 rel_l2({p_p}, want)]
                "#,
                p_r = case1("r"),
                p_q = case1("q"),
                p_p = case1("p")
            ),
        )
        .into_array()
        .unwrap();
        let err = as_f64(v[0].clone());
        assert!(err <= 1e-4, "legacy {legacy}: {err:.3e}");
        assert_eq!(
            as_f64(v[1].clone()) as usize,
            want,
            "legacy {legacy}: ledger bytes"
        );
        assert_eq!(v[2].clone().into_string().unwrap(), "fp8");
        assert!(as_f64(v[3].clone()) > 0.0, "expected a partial load");
        assert!(as_f64(v[4].clone()) <= 1e-4, "streamed fp8 blocks");
        let e = common::eval_err(
            &mut s,
            &format!(
                r#"apply_lora(p, "{}", 1.0)"#,
                common::fixture("lora_tiny/lora_original_peft.safetensors").display()
            ),
        );
        assert!(e.contains("fp8"), "{e}");
        let e = common::eval_err(
            &mut s,
            &format!(r#"load_model("{ref_path}", #{{ dtype: "fp8" }})"#),
        );
        assert!(e.contains("has none"), "{e}");
    }
}

/// Without a `dtype`, an fp8 checkpoint is dequantised to bf16 at load when
/// that fits the free budget whole, and kept as fp8 (1 byte a weight,
/// dequantised per layer) when it does not and fp8 is the smaller; both give
/// the reference's output within bf16 / fp8 tolerance, and the choice shows
/// in `m.dtype`.
#[test]
fn fp8_without_a_dtype_dequantises_only_when_it_fits() {
    let dir = tempfile::tempdir().unwrap();
    let (fp8, reference) = quantised_linears(true, false);
    let fp8_path = save(dir.path(), "fp8.safetensors", &fp8);
    let ref_path = save(dir.path(), "ref.safetensors", &reference);
    let mut s = common::session_with(None, dir.path());
    let v = eval(
        &mut s,
        &format!(
            r#"
            let c = load_tensors("{FORWARD_CASES}");
            let r = load_model("{ref_path}", #{{ name: "ref" }});
            let want = {p_r};
            let bf16_bytes = r.bytes / 2;
            delete_model(r);
            let a = load_model("{fp8_path}", #{{ name: "a" }});
            let a_dtype = a.dtype;
            let a_err = rel_l2({p_a}, want);
            delete_model(a);
            vram_budget(bf16_bytes - 1000);
            let b = load_model("{fp8_path}", #{{ name: "b" }});
            [a_dtype, a_err, b.dtype, b.offloaded_bytes,
             rel_l2({p_b}, want)]
            "#,
            p_r = case1("r"),
            p_a = case1("a"),
            p_b = case1("b")
        ),
    )
    .into_array()
    .unwrap();
    assert_eq!(v[0].clone().into_string().unwrap(), "bf16");
    let a_err = as_f64(v[1].clone());
    assert!(a_err <= 2e-2, "bf16 dequantised at load: {a_err:.3e}");
    assert_eq!(v[2].clone().into_string().unwrap(), "fp8");
    assert_eq!(as_f64(v[3].clone()), 0.0, "kept as fp8 it fits whole");
    let b_err = as_f64(v[4].clone());
    assert!(
        b_err <= 1e-4,
        "fp8 per layer (f32 compute on the CPU): {b_err:.3e}"
    );
}
