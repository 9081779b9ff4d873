//! umT5 encoder and tokenizer vs the golden fixtures (tests/fixtures/umt5_tiny:
//! transformers `UMT5EncoderModel`, sentencepiece 0.2.3, tokenizers 0.23.3; its
//! README documents every case).
mod common;

use baton::models::umt5::layout::{canonical_map, check_supported, is_umt5, to_canonical};
use baton::models::umt5::{
    clean_prompt, pipeline_context, Tokens, UmT5Block, UmT5Config, UmT5Encoder, UmT5Stem,
    UmT5Tokenizer,
};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;
use std::collections::HashMap;

/// Encoder tolerance: the fixture's two independent f32 references (HF and
/// Wan's own `T5Encoder`) differ by 2.6e-6 at most on outputs of std ~1, so
/// 1e-4 (relative L2 and absolute) leaves room for summation order while a
/// semantic slip (missing mask: 2.5; 10% noise on the least sensitive tensor:
/// 1.9e-2 relative) is far outside it.
const TOL: f64 = 1e-4;

fn hf_weights() -> HashMap<String, Tensor> {
    common::load_fixture("umt5_tiny/hf.safetensors")
}

fn shapes_of(w: &HashMap<String, Tensor>) -> HashMap<String, Vec<usize>> {
    w.iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect()
}

/// Builds the encoder from file-layout tensors the way a loader will: map keys
/// to canonical names, infer the config from shapes, hand a `VarBuilder` over.
fn build(file: &HashMap<String, Tensor>, dtype: DType) -> UmT5Encoder {
    assert!(is_umt5(file.keys().map(String::as_str)), "is_umt5");
    check_supported(file.keys().map(String::as_str)).expect("supported");
    let map = canonical_map(file.keys().map(String::as_str)).expect("canonical map");
    let canon: HashMap<String, Tensor> = map
        .iter()
        .map(|(c, k)| (c.clone(), file[k].to_dtype(dtype).unwrap()))
        .collect();
    let shapes = shapes_of(&canon);
    let cfg = UmT5Config::infer(shapes.iter().map(|(k, s)| (k.as_str(), s.as_slice())))
        .expect("infer config");
    assert_eq!(cfg, UmT5Config::fixture_tiny(), "inferred config");
    let vb = VarBuilder::from_tensors(canon, dtype, &Device::Cpu);
    UmT5Encoder::new(&cfg, vb).expect("build encoder")
}

/// Runs both encoder cases, prints and returns (case, rel L2, max abs).
fn run_cases(model: &UmT5Encoder, what: &str) -> Vec<(String, f64, f64)> {
    let fx = common::load_fixture("umt5_tiny/cases.safetensors");
    let mut out = Vec::new();
    for case in ["case0", "case_long"] {
        let g = |n: &str| &fx[&format!("{case}.{n}")];
        let hidden = model
            .forward(g("input_ids"), g("attention_mask"))
            .expect("forward");
        let want = g("last_hidden_state");
        assert_eq!(hidden.dims(), want.dims(), "{what} {case}: shape");
        assert_eq!(hidden.dtype(), DType::F32);
        let rel = common::rel_l2(&hidden, want);
        let abs = common::max_abs_diff(&hidden, want);
        println!("{what} {case}: rel L2 {rel:.3e}, max abs {abs:.3e}");
        out.push((case.to_string(), rel, abs));
    }
    out
}

fn assert_f32_parity(model: &UmT5Encoder, what: &str) {
    for (case, rel, abs) in run_cases(model, what) {
        assert!(
            rel <= TOL && abs <= TOL,
            "{what} {case}: rel L2 {rel:.3e}, max abs {abs:.3e} > {TOL:.0e}"
        );
    }
}

#[test]
fn hf_layout_matches_transformers() {
    assert_f32_parity(&build(&hf_weights(), DType::F32), "hf layout");
}

/// The original Wan `t5.py` names, written out independently of the crate's
/// mapping table so that a wrong entry there fails here.
fn to_wan_name(hf: &str) -> String {
    if hf == "shared.weight" {
        return "token_embedding.weight".into();
    }
    if hf == "encoder.final_layer_norm.weight" {
        return "norm.weight".into();
    }
    let rest = hf.strip_prefix("encoder.block.").expect("block key");
    let (n, sub) = rest.split_once('.').unwrap();
    let wan = match sub {
        "layer.0.layer_norm.weight" => "norm1.weight",
        "layer.0.SelfAttention.q.weight" => "attn.q.weight",
        "layer.0.SelfAttention.k.weight" => "attn.k.weight",
        "layer.0.SelfAttention.v.weight" => "attn.v.weight",
        "layer.0.SelfAttention.o.weight" => "attn.o.weight",
        "layer.0.SelfAttention.relative_attention_bias.weight" => "pos_embedding.embedding.weight",
        "layer.1.layer_norm.weight" => "norm2.weight",
        "layer.1.DenseReluDense.wi_0.weight" => "ffn.gate.0.weight",
        "layer.1.DenseReluDense.wi_1.weight" => "ffn.fc1.weight",
        "layer.1.DenseReluDense.wo.weight" => "ffn.fc2.weight",
        other => panic!("unexpected key {other}"),
    };
    format!("blocks.{n}.{wan}")
}

#[test]
fn wan_layout_matches_transformers() {
    let wan: HashMap<String, Tensor> = hf_weights()
        .into_iter()
        .map(|(k, t)| (to_wan_name(&k), t))
        .collect();
    assert!(wan.contains_key("blocks.1.pos_embedding.embedding.weight"));
    assert_f32_parity(&build(&wan, DType::F32), "wan layout");
}

#[test]
fn comfy_prefixed_layout_with_extras_matches() {
    // A ComfyUI-saved text encoder: prefixed keys, the tokenizer bytes, the
    // transformers alias of the embedding. Extras must be ignored.
    let mut file: HashMap<String, Tensor> = hf_weights()
        .into_iter()
        .map(|(k, t)| (format!("text_encoders.umt5xxl.transformer.{k}"), t))
        .collect();
    let emb = file["text_encoders.umt5xxl.transformer.shared.weight"].clone();
    file.insert("encoder.embed_tokens.weight".into(), emb);
    let spiece = std::fs::read(common::fixture("umt5_tiny/spiece.model")).unwrap();
    let n = spiece.len();
    file.insert(
        "spiece_model".into(),
        Tensor::from_vec(spiece, n, &Device::Cpu).unwrap(),
    );
    assert_eq!(to_canonical("spiece_model"), None);
    assert_f32_parity(&build(&file, DType::F32), "comfy prefixed");
}

#[test]
fn half_precision_weights_stay_close() {
    // bf16/f16 weights, f32 compute: only the weight rounding differs, so the
    // error is that of 8-bit (bf16) or 11-bit (f16) mantissas through two
    // layers: measured 6.9e-3 / 8.3e-4 relative. A dtype bug (weights read as
    // the wrong type, f16 overflow) is O(1).
    for (dtype, tol) in [(DType::BF16, 3e-2), (DType::F16, 5e-3)] {
        let model = build(&hf_weights(), dtype);
        for (case, rel, _) in run_cases(&model, &format!("{dtype:?} weights")) {
            assert!(rel <= tol, "{dtype:?} {case}: rel L2 {rel:.3e} > {tol:.0e}");
        }
    }
}

#[test]
fn mask_and_ids_matter() {
    // Guards the guards: the fixture outputs depend on the mask and on every
    // id, so the parity tests above cannot pass by accident.
    let model = build(&hf_weights(), DType::F32);
    let fx = common::load_fixture("umt5_tiny/cases.safetensors");
    let (ids, mask) = (&fx["case0.input_ids"], &fx["case0.attention_mask"]);
    let want = &fx["case0.last_hidden_state"];
    let no_mask = model.forward(ids, &mask.ones_like().unwrap()).unwrap();
    let d = common::max_abs_diff(&no_mask, want);
    println!("case0 without mask: max abs {d:.3e}");
    assert!(d > 0.1, "the key mask has no effect ({d:.3e})");
    // u32 ids give the same result as i64 ids.
    let out_u32 = model
        .forward(&ids.to_dtype(DType::U32).unwrap(), mask)
        .unwrap();
    common::assert_close(&out_u32, want, TOL, "u32 ids");
}

#[test]
fn streamed_blocks_equal_the_resident_model() {
    // A runtime short of memory builds the stem, then one block at a time.
    let model = build(&hf_weights(), DType::F32);
    let vb = VarBuilder::from_tensors(hf_weights(), DType::F32, &Device::Cpu);
    let cfg = UmT5Config::fixture_tiny();
    let stem = UmT5Stem::new(&cfg, vb.clone()).unwrap();
    let fx = common::load_fixture("umt5_tiny/cases.safetensors");
    let (ids, mask) = (&fx["case_long.input_ids"], &fx["case_long.attention_mask"]);
    let p = stem.prepare(ids, mask).unwrap();
    let mut x = p.x.clone();
    for i in 0..cfg.num_layers {
        let block = UmT5Block::new(&cfg, vb.pp("encoder.block").pp(i)).unwrap();
        x = block.forward(&x, &p).unwrap();
    }
    let streamed = stem.finish(&x).unwrap();
    let resident = model.forward(ids, mask).unwrap();
    assert_eq!(common::max_abs_diff(&streamed, &resident), 0.0);
}

#[test]
fn pipeline_context_trims_and_zero_pads() {
    let model = build(&hf_weights(), DType::F32);
    let fx = common::load_fixture("umt5_tiny/cases.safetensors");
    let mask = &fx["case0.attention_mask"];
    let hidden = model.forward(&fx["case0.input_ids"], mask).unwrap();
    let ctx = pipeline_context(&hidden, mask, 512).unwrap();
    assert_eq!(ctx.dims(), &[2, 512, 32]);
    // Row 0: 12 real tokens; row 1: 10 real tokens then zeros.
    for (b, len) in [(0usize, 12usize), (1, 10)] {
        let real = ctx.i((b, ..len)).unwrap();
        common::assert_close(&real, &hidden.i((b, ..len)).unwrap(), 0.0, "real rows");
        let tail = ctx.i((b, len..)).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(tail.to_scalar::<f32>().unwrap(), 0.0, "padding rows of {b}");
    }
    let err = pipeline_context(&hidden, mask, 11).unwrap_err().to_string();
    assert!(err.contains("12 tokens"), "{err}");
}

#[test]
fn bad_inputs_are_errors() {
    let model = build(&hf_weights(), DType::F32);
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[5u32, 512, 1]], &dev).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1]], &dev).unwrap();
    let err = model.forward(&ids, &mask).unwrap_err().to_string();
    assert!(err.contains("token id 512"), "{err}");
    let neg = Tensor::new(&[[5i64, -1, 1]], &dev).unwrap();
    assert!(model.forward(&neg, &mask).is_err());
    let ok_ids = Tensor::new(&[[5u32, 6, 1]], &dev).unwrap();
    let short_mask = Tensor::new(&[[1u32, 1]], &dev).unwrap();
    assert!(model.forward(&ok_ids, &short_mask).is_err());
    assert!(model
        .forward(&Tensor::new(&[5u32, 6, 1], &dev).unwrap(), &mask)
        .is_err());
    let two = Tensor::new(&[[1u32, 2, 1]], &dev).unwrap();
    assert!(model.forward(&ok_ids, &two).is_err());
    let float_ids = Tensor::new(&[[5f32, 6., 1.]], &dev).unwrap();
    assert!(model.forward(&float_ids, &mask).is_err());

    // A config that does not fit the file is an error, not a panic.
    let mut shapes = shapes_of(&hf_weights());
    shapes.remove("encoder.block.1.layer.1.DenseReluDense.wo.weight");
    let err =
        UmT5Config::infer(shapes.iter().map(|(k, s)| (k.as_str(), s.as_slice()))).unwrap_err();
    assert!(err.contains("wo.weight"), "{err}");
    // Plain T5 (bias table in block 0 only) is not umT5.
    let mut t5 = hf_weights();
    t5.remove("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight");
    assert!(!is_umt5(t5.keys().map(String::as_str)));

    assert!(UmT5Tokenizer::from_spiece_bytes(b"\x0a\x03abc garbage").is_err());
}

// ---------------------------------------------------------------------------
// tokenizer

fn tokens_json() -> Value {
    let path = common::fixture("umt5_tiny/tokens.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn tokenizer() -> UmT5Tokenizer {
    UmT5Tokenizer::from_file(&common::fixture("umt5_tiny/spiece.model")).unwrap()
}

#[test]
fn spiece_byte_fallback_ids_match_sentencepiece() {
    // baton's path: sentencepiece's own ids (ComfyUI), exactly.
    let tok = tokenizer();
    assert!(tok.sentencepiece().byte_fallback());
    assert_eq!((tok.eos_id(), tok.pad_id()), (1, 0));
    let fx = tokens_json();
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, usize::MAX).unwrap();
        println!("{text:?}: {} ids", got.len());
        assert_eq!(got.ids, ids_of(&case["spm_eos_ids"]), "spm ids of {text:?}");
        assert!(!got.truncated());
        let cleaned = tok.encode(&clean_prompt(text), usize::MAX).unwrap();
        assert_eq!(
            cleaned.ids,
            ids_of(&case["spm_eos_ids_after_wan_clean"]),
            "spm ids of cleaned {text:?}"
        );
    }
}

#[test]
fn without_byte_fallback_ids_match_transformers() {
    // The diffusers / Wan path (transformers' tokenizer.json, byte fallback
    // off): every difference to the spm path is an <unk> for a byte run.
    let tok = tokenizer().without_byte_fallback();
    let fx = tokens_json();
    let mut differ = 0;
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, usize::MAX).unwrap();
        assert_eq!(got.ids, ids_of(&case["hf_ids"]), "hf ids of {text:?}");
        let cleaned = tok.encode(&clean_prompt(text), usize::MAX).unwrap();
        assert_eq!(
            cleaned.ids,
            ids_of(&case["hf_ids_after_wan_clean"]),
            "hf ids of cleaned {text:?}"
        );
        differ += usize::from(got.ids != ids_of(&case["spm_eos_ids"]));
    }
    println!("hf path differs from the spm path on {differ} of 8 strings");
    assert_eq!(differ, 5);
}

#[test]
fn cleaning_matches_wan_prompt_clean() {
    let fx = tokens_json();
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            clean_prompt(text),
            case["wan_clean_text"].as_str().unwrap(),
            "clean of {text:?}"
        );
    }
}

#[test]
fn padded_batch_matches_diffusers() {
    // `WanPipeline._get_t5_prompt_embeds` with max_length 16 (the fixture's
    // stand-in for 512): cleaned texts, transformers ids, right padding.
    let tok = tokenizer().without_byte_fallback();
    let fx = tokens_json();
    let want = &fx["padded_batch_max_length_16"];
    let prompts: Vec<Tokens> = want["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| tok.encode(&clean_prompt(t.as_str().unwrap()), 16).unwrap())
        .collect();
    assert_eq!(
        prompts[0].dropped,
        31 - 16,
        "text 0 is cut from 31 ids to 16"
    );
    assert!(!prompts[1].truncated());
    let (ids, mask) = tok.batch(&prompts, 16, &Device::Cpu).unwrap();
    let rows = |v: &Value| -> Vec<Vec<u32>> { v.as_array().unwrap().iter().map(ids_of).collect() };
    assert_eq!(ids.to_vec2::<u32>().unwrap(), rows(&want["input_ids"]));
    assert_eq!(
        mask.to_vec2::<u32>().unwrap(),
        rows(&want["attention_mask"])
    );
}

#[test]
fn truncation_reproduces_case0_inputs() {
    // case0.input_ids: the case0 texts at max_length 12 through transformers
    // (row 0 truncated to 11 tokens + EOS, row 1 padded).
    let tok = tokenizer().without_byte_fallback();
    let fx = common::load_fixture("umt5_tiny/cases.safetensors");
    let texts = [
        "Two children run through the forest; 两个孩子在森林里跑步!",
        "一只猫在海边散步,电影感。",
    ];
    let prompts: Vec<Tokens> = texts.iter().map(|t| tok.encode(t, 12).unwrap()).collect();
    assert_eq!(prompts[0].dropped, 30 - 12);
    assert_eq!(*prompts[0].ids.last().unwrap(), 1, "EOS kept last");
    assert_eq!(prompts[1].dropped, 0);
    let (ids, mask) = tok.batch(&prompts, 12, &Device::Cpu).unwrap();
    let want = |k: &str| {
        fx[k]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap()
    };
    assert_eq!(ids.to_vec2::<u32>().unwrap(), want("case0.input_ids"));
    assert_eq!(mask.to_vec2::<u32>().unwrap(), want("case0.attention_mask"));

    // The edges: room for EOS only, no room at all, and the empty prompt.
    let only_eos = tok.encode(texts[1], 1).unwrap();
    assert_eq!((only_eos.ids.clone(), only_eos.dropped), (vec![1], 9));
    assert!(tok.encode(texts[1], 0).is_err());
    let empty = tok.encode("", 512).unwrap();
    assert_eq!((empty.ids, empty.dropped), (vec![1], 0));
    assert!(tok.batch(&[], 4, &Device::Cpu).is_err());
}
