//! A community-format (ComfyUI-GGUF) Wan DiT: detected from the GGUF,
//! weights kept quantized, forward cases against diffusers on the
//! dequantized weights (tests/fixtures/gguf/wan_tiny_Q4_K_M*).
mod common;

use baton::checkpoint::{detect, CheckpointSource, Header};
use baton::models::wan::dit::WanDit;
use candle_core::{DType, Device};
use common::{as_f64, eval, run, session_with};

const FILE: &str = "gguf/wan_tiny_Q4_K_M.gguf";

#[test]
fn q4_k_m_forward_cases_match_diffusers_on_the_dequantized_weights() {
    let header = Header::read(&common::fixture(FILE)).unwrap();
    let d = detect(&header, None).unwrap();
    assert_eq!((d.cfg.dim, d.cfg.num_layers, d.cfg.num_heads), (256, 2, 2));
    assert_eq!(d.dtype, "q4_k");
    let src = CheckpointSource::open(&header, d.tensors.clone()).unwrap();
    let model = WanDit::new(&d.cfg, src.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let fx = common::load_fixture("gguf/wan_tiny_Q4_K_M_cases.safetensors");
    for k in 0..3 {
        let g = |n: &str| &fx[&format!("case{k}_{n}")];
        let out = model.forward(g("x"), g("t"), g("context")).unwrap();
        let err = common::max_abs_diff(&out, g("out"));
        let err_src = common::max_abs_diff(&out, g("out_source"));
        println!("case{k}: max abs vs caseK_out {err:.2e}, vs caseK_out_source {err_src:.2e}");
        assert!(
            err <= 1e-4,
            "case{k}: {err:.2e} off diffusers on the dequantized weights"
        );
        assert!(err < err_src);
    }
}

/// `load_model` on the GGUF: the ledger holds the file's tensor bytes (the
/// quantized blocks and the F16 linears as stored; nothing is widened but
/// the F32 tensors, which are F32 in the file too) and `delete_model` drops it.
#[test]
fn load_model_counts_the_files_tensor_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = session_with(None, dir.path());
    let p = common::fixture(FILE).display().to_string();
    run(&mut s, &format!(r#"let m = load_model("{p}");"#));
    let ledger = as_f64(eval(&mut s, "vram().used"));
    let header = Header::read(&common::fixture(FILE)).unwrap();
    let file_bytes = header.total_bytes() as f64;
    println!("ledger {ledger} bytes, file tensor bytes {file_bytes}");
    assert_eq!(ledger, file_bytes);
    let fx = common::fixture("gguf/wan_tiny_Q4_K_M_cases.safetensors")
        .display()
        .to_string();
    run(
        &mut s,
        &format!(
            r#"let fx = load_tensors("{fx}"); let v = predict(m, fx["case1_x"], 500.0, fx["case1_context"]);"#
        ),
    );
    run(&mut s, "delete_model(m);");
    assert_eq!(as_f64(eval(&mut s, "vram().used")), 0.0);
}

/// umT5 from a llama.cpp-named GGUF (`CLIPLoaderGGUF`'s files): names
/// mapped to HF's, Q8_0 matrices and embedding kept as blocks (dequantized per call, the embedding per row), against
/// transformers' `last_hidden_state` on the dequantized weights.
#[test]
fn umt5_gguf_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = session_with(None, dir.path());
    let p = common::fixture("gguf/umt5_tiny_Q8_0.gguf")
        .display()
        .to_string();
    let c = common::fixture("gguf/umt5_tiny_Q8_0_cases.safetensors")
        .display()
        .to_string();
    run(
        &mut s,
        &format!(r#"let te = load_model("{p}"); let c = load_tensors("{c}");"#),
    );
    assert_eq!(eval(&mut s, "te.arch").into_string().unwrap(), "umt5 2x64");
    // Q8_0 matrices and the embedding kept as their blocks: the ledger is
    // the file's tensor bytes.
    let ledger = as_f64(eval(&mut s, "vram().used"));
    let file = Header::read(&common::fixture("gguf/umt5_tiny_Q8_0.gguf")).unwrap();
    println!(
        "umT5 GGUF: ledger {ledger} bytes, file tensor bytes {}",
        file.total_bytes()
    );
    assert_eq!(ledger, file.total_bytes() as f64);
    for case in ["case0", "case_long"] {
        let err = as_f64(eval(
            &mut s,
            &format!(
                r#"max_abs(encode_ids(te, c["{case}.input_ids"], c["{case}.attention_mask"])
                          - c["{case}.last_hidden_state"])"#
            ),
        ));
        println!("umT5 GGUF {case}: max abs {err:.2e}");
        assert!(err <= 1e-4, "{case}: {err:.2e}");
    }
}

/// Under a budget that holds no block, every block streams as its GGUF
/// blocks and the output is the same as the resident model's.
#[test]
fn streamed_gguf_blocks_give_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = session_with(None, dir.path());
    let p = common::fixture(FILE).display().to_string();
    let fx = common::fixture("gguf/wan_tiny_Q4_K_M_cases.safetensors")
        .display()
        .to_string();
    run(
        &mut s,
        &format!(
            r#"let fx = load_tensors("{fx}");
               let m = load_model("{p}", #{{ name: "full" }});
               let a = predict(m, fx["case1_x"], 500.0, fx["case1_context"]);
               delete_model(m);
               vram_budget("2MiB");
               let m = load_model("{p}", #{{ name: "streamed" }});
               let b = predict(m, fx["case1_x"], 500.0, fx["case1_context"]);"#
        ),
    );
    let offloaded = as_f64(eval(&mut s, "vram().models[0].offloaded"));
    let bytes = as_f64(eval(&mut s, "vram().models[0].bytes"));
    let diff = as_f64(eval(&mut s, "max_abs(a - b)"));
    // The blocks stream as stored: what is offloaded is their quantized
    // bytes in the file (Q4_K / Q6_K blocks, F32 norms and biases).
    let header = Header::read(&common::fixture(FILE)).unwrap();
    let block_bytes: usize = header
        .tensors
        .iter()
        .filter(|(k, _)| k.starts_with("blocks."))
        .map(|(_, e)| e.bytes())
        .sum();
    println!(
        "streamed: {offloaded} bytes offloaded (the blocks' file bytes: {block_bytes}), \
         model {bytes} bytes, max abs vs resident {diff:.2e}"
    );
    assert!(offloaded > 0.0);
    assert_eq!(offloaded, block_bytes as f64);
    assert_eq!(bytes, header.total_bytes() as f64);
    assert_eq!(diff, 0.0);
}

/// A LoRA on a GGUF model runs as a low-rank branch beside the quantized
/// weights: the same output as the LoRA merged into the dequantized f32
/// twin, the ledger grows by the factors only, and `remove_lora` gives the
/// bit-identical output of the model without it.
#[test]
fn lora_on_gguf_is_a_runtime_low_rank_branch() {
    use candle_core::Tensor;
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let header = Header::read(&common::fixture(FILE)).unwrap();
    let src = CheckpointSource::open(&header, header.tensors.clone()).unwrap();
    let twin: HashMap<String, Tensor> = header
        .tensors
        .keys()
        .map(|k| (k.clone(), src.tensor(k, DType::F32, &Device::Cpu).unwrap()))
        .collect();
    let twin_path = dir.path().join("twin.safetensors");
    candle_core::safetensors::save(&twin, &twin_path).unwrap();
    let r = |s: &[usize]| Tensor::randn(0f32, 0.05, s, &Device::Cpu).unwrap();
    let lora: HashMap<String, Tensor> = [
        (
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
            r(&[4, 256]),
        ),
        (
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight",
            r(&[256, 4]),
        ),
        (
            "diffusion_model.blocks.0.self_attn.q.alpha",
            Tensor::new(8f32, &Device::Cpu).unwrap(),
        ),
        (
            "diffusion_model.blocks.1.ffn.0.lora_down.weight",
            r(&[4, 256]),
        ),
        (
            "diffusion_model.blocks.1.ffn.0.lora_up.weight",
            r(&[512, 4]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let lora_path = dir.path().join("l.safetensors");
    candle_core::safetensors::save(&lora, &lora_path).unwrap();
    let mut s = session_with(None, dir.path());
    let fx = common::fixture("gguf/wan_tiny_Q4_K_M_cases.safetensors")
        .display()
        .to_string();
    let (g, t, l) = (
        common::fixture(FILE).display().to_string(),
        twin_path.display().to_string(),
        lora_path.display().to_string(),
    );
    run(
        &mut s,
        &format!(
            r#"let fx = load_tensors("{fx}");
               let x = fx["case1_x"]; let c = fx["case1_context"];
               let g = load_model("{g}", #{{ name: "gguf" }});
               let plain = predict(g, x, 500.0, c);
               let before = vram().used;
               apply_lora(g, "{l}", 0.8);
               let lora_bytes = vram().used - before;
               let a = predict(g, x, 500.0, c);
               let tw = load_model("{t}", #{{ name: "twin" }});
               apply_lora(tw, "{l}", 0.8);
               let b = predict(tw, x, 500.0, c);
               delete_model(tw);
               remove_lora(g, "{l}");
               let back = predict(g, x, 500.0, c);"#
        ),
    );
    let diff = as_f64(eval(&mut s, "max_abs(a - b)"));
    let effect = as_f64(eval(&mut s, "max_abs(a - plain)"));
    let back = as_f64(eval(&mut s, "max_abs(back - plain)"));
    let lora_bytes = as_f64(eval(&mut s, "lora_bytes"));
    println!(
        "LoRA on GGUF: vs merged into the f32 twin {diff:.2e} (LoRA effect {effect:.2e}); \
         after remove_lora {back:e}; ledger +{lora_bytes} bytes"
    );
    assert!(effect > 1e-3, "the LoRA must change the output");
    assert!(diff <= 1e-4, "{diff:.2e}");
    assert_eq!(back, 0.0);
    assert_eq!(
        lora_bytes,
        ((4 * 256 + 256 * 4 + 4 * 256 + 512 * 4) * 4) as f64
    );
}
