//! Wan DiT forward vs the diffusers golden fixtures (tests/fixtures/wan_tiny).
mod common;

use baton::models::wan::dit::{
    attention, attention_chunked, rope_axis_slots, rope_table, timestep_sinusoid, unpatchify,
    WanBlock, WanStem,
};
use baton::models::wan::WanConfig;
use candle_core::{DType, Device, Tensor};
use common::golden::{report_close, tiny_dit, tiny_dit_vb};

#[test]
fn f32_forward_cases() {
    let model = tiny_dit(DType::F32);
    let fx = common::load_fixture("wan_tiny/forward_cases.safetensors");
    for k in 0..4 {
        let g = |n: &str| &fx[&format!("case{k}_{n}")];
        let out = model.forward(g("x"), g("t"), g("context")).unwrap();
        // Independent f32 references agree to ~1e-6 relative; 1e-4 leaves room
        // for summation order without hiding a semantic slip (those are >1e-3).
        report_close(&out, g("out"), 1e-4, &format!("case{k}_out"));
    }
}

#[test]
fn bf16_forward_matches_f32_reference() {
    let model = tiny_dit(DType::BF16);
    let fx = common::load_fixture("wan_tiny/forward_cases.safetensors");
    let out = model
        .forward(&fx["bf16_x"], &fx["bf16_t"], &fx["bf16_context"])
        .unwrap();
    assert_eq!(out.dtype(), DType::F32);
    let err = common::rel_l2(&out, &fx["case1_out"]);
    println!(
        "bf16 vs f32 case1_out: rel L2 {err:.3e}, max abs {:.3e}; vs diffusers bf16 keepfp32 {:.3e}, allbf16 {:.3e}; diffusers keepfp32 vs f32 {:.3e}",
        common::max_abs_diff(&out, &fx["case1_out"]),
        common::rel_l2(&out, &fx["bf16_out_keepfp32"]),
        common::rel_l2(&out, &fx["bf16_out_allbf16"]),
        common::rel_l2(&fx["bf16_out_keepfp32"], &fx["case1_out"]),
    );
    // diffusers' own bf16 run is ~7e-3 off the f32 output; bf16 rounding order
    // differs between implementations, so allow about 3x that.
    common::assert_close(&out, &fx["case1_out"], 2e-2, "bf16 out vs f32 case1_out");
}

#[test]
fn case1_intermediates() {
    let cfg = WanConfig::fixture_tiny();
    let model = tiny_dit(DType::F32);
    let fx = common::load_fixture("wan_tiny/forward_cases.safetensors");
    let dbg = common::load_fixture("wan_tiny/forward_intermediates.safetensors");
    let d = |n: &str| &dbg[&format!("dbg_case1_{n}")];
    // Intermediates are f32 activations computed the same way as the reference;
    // 1e-5 relative is a few f32 ulps of accumulated rounding. The sinusoid's
    // arguments reach 500 rad, where one f32 ulp of the argument is ~3e-5.
    let tol = 1e-5;

    let sin = timestep_sinusoid(&fx["case1_t"], cfg.freq_dim).unwrap();
    report_close(&sin, d("t_sinusoid"), tol, "t_sinusoid");

    let p = model
        .stem
        .prepare(&fx["case1_x"], &fx["case1_t"], &fx["case1_context"])
        .unwrap();
    assert_eq!(p.grid, [3, 4, 3]);
    // One timestep per sample: T = 1 in [B, T, dim] / [B, T, 6, dim].
    report_close(&p.e.squeeze(1).unwrap(), d("temb"), tol, "temb");
    report_close(
        &p.e0.squeeze(1).unwrap(),
        d("timestep_proj"),
        tol,
        "timestep_proj",
    );
    report_close(&p.context, d("context_emb"), tol, "context_emb");
    report_close(&p.tokens, d("patch_tokens"), tol, "patch_tokens");
    let (cos, sin) = p.rope.interleaved().unwrap();
    report_close(&cos, d("rope_cos"), tol, "rope_cos");
    report_close(&sin, d("rope_sin"), tol, "rope_sin");

    let b0 = model.blocks[0].forward(&p.tokens, &p).unwrap();
    report_close(&b0, d("block0_out"), tol, "block0_out");
    // Feed the reference block0 output so block1 is checked on its own.
    let b1 = model.blocks[1].forward(d("block0_out"), &p).unwrap();
    report_close(&b1, d("block1_out"), tol, "block1_out");
    let head = model.stem.head(d("block1_out"), &p).unwrap();
    report_close(&head, d("head_out"), tol, "head_out");
    let out = unpatchify(d("head_out"), p.grid, &cfg).unwrap();
    // Unpatchify is a pure permutation: exact.
    report_close(&out, &fx["case1_out"], 1e-6, "unpatchify(head_out)");
}

#[test]
fn streamed_blocks_equal_resident_forward() {
    let model = tiny_dit(DType::F32);
    let fx = common::load_fixture("wan_tiny/forward_cases.safetensors");
    let (x, t, ctx) = (&fx["case3_x"], &fx["case3_t"], &fx["case3_context"]);
    let resident = model.forward(x, t, ctx).unwrap();

    // Same weights, built one piece at a time as the runtime streams them.
    let cfg = WanConfig::fixture_tiny();
    let vb = tiny_dit_vb(DType::F32);
    let stem = WanStem::new(&cfg, vb.clone()).unwrap();
    let p = stem.prepare(x, t, ctx).unwrap();
    let mut h = p.tokens.clone();
    for i in 0..cfg.num_layers {
        let block = WanBlock::new(&cfg, vb.pp("blocks").pp(i)).unwrap();
        h = block.forward(&h, &p).unwrap();
        drop(block);
    }
    let streamed = stem.finish(&h, &p).unwrap();
    // Identical ops on identical data: bit-exact.
    assert_eq!(common::max_abs_diff(&streamed, &resident), 0.0);
}

#[test]
fn rope_split_for_wan_head_dim_128() {
    // Real Wan models: head_dim 128 -> 64 pairs split (22, 21, 21); each axis
    // has its own frequency ladder theta^(-2j / (2 n_axis)).
    let cfg = WanConfig::wan22_t2v_a14b();
    assert_eq!(rope_axis_slots(cfg.head_dim()), [22, 21, 21]);
    assert_eq!(rope_axis_slots(24), [4, 4, 4]);
    let grid = [2, 3, 4];
    let rope = rope_table(&cfg, grid, &Device::Cpu).unwrap();
    let (f, h, w) = (1usize, 2usize, 3usize);
    let row = (f * grid[1] + h) * grid[2] + w;
    let got = rope.cos.get(row).unwrap().to_vec1::<f32>().unwrap();
    let mut want = Vec::new();
    for (pos, n) in [(f, 22usize), (h, 21), (w, 21)] {
        for j in 0..n {
            let fr = 1.0 / 10000f64.powf((2 * j) as f64 / (2 * n) as f64);
            want.push((pos as f64 * fr).cos() as f32);
        }
    }
    assert_eq!(got, want);
    let t = Tensor::new(&[0f32], &Device::Cpu).unwrap();
    let s = timestep_sinusoid(&t, 256)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // t = 0: cos half is 1, sin half is 0.
    assert!(s[0][..128].iter().all(|&v| v == 1.0) && s[0][128..].iter().all(|&v| v == 0.0));
}

#[test]
fn chunked_attention_matches_one_shot() {
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (2, 3, 37, 8), &dev).unwrap();
    let k = Tensor::randn(0f32, 1.0, (2, 3, 11, 8), &dev).unwrap();
    let v = Tensor::randn(0f32, 1.0, (2, 3, 11, 8), &dev).unwrap();
    let full = attention(&q, &k, &v).unwrap();
    // 5 query rows per chunk (uneven last chunk) and the 1-row minimum.
    for budget in [2 * 3 * 11 * 5 * 4, 1] {
        let chunked = attention_chunked(&q, &k, &v, budget).unwrap();
        // Row-independent softmax: chunking changes nothing but the gemm tiling.
        common::assert_close(&chunked, &full, 1e-6, "chunked attention");
    }
}
