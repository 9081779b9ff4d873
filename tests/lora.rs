//! LoRAs on the Wan DiT against the diffusers/ComfyUI golden fixtures in
//! tests/fixtures/lora_tiny: four file formats of one rank-4, alpha-8 LoRA,
//! merged weights at strengths 1.0 and 0.6, and a forward case.
mod common;

use baton::runtime::{LoadOptions, ModelId, Runtime};
use candle_core::{DType, Device, Tensor};
use common::golden::{report_close, TINY_DIT};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MODEL: &str = TINY_DIT;
const FORMATS: &[&str] = &[
    "lora_comfy_kohya",
    "lora_original_peft",
    "lora_diffusers_peft",
    "lora_musubi",
];
const MODULES: &[&str] = &[
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "ffn.0",
    "ffn.2",
];

fn lora(format: &str) -> String {
    format!("tests/fixtures/lora_tiny/{format}.safetensors")
}

fn targets() -> Vec<String> {
    (0..2)
        .flat_map(|n| {
            MODULES
                .iter()
                .map(move |m| format!("blocks.{n}.{m}.weight"))
        })
        .collect()
}

fn runtime() -> Runtime {
    let mut rt = Runtime::new(Device::Cpu, None);
    rt.model_roots = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))].into();
    rt
}

fn load(rt: &mut Runtime) -> ModelId {
    let opts = LoadOptions {
        heads: Some(2),
        dtype: Some(DType::F32),
        ..Default::default()
    };
    rt.load_model(MODEL, &opts, "test")
        .expect("load the tiny DiT")
}

/// A model whose blocks all stream: the budget is one byte short of the
/// whole model at load time, then widened so LoRA factors fit.
fn load_streamed(rt: &mut Runtime) -> ModelId {
    let probe = load(rt);
    let total = rt.model_bytes(probe).unwrap();
    rt.delete_model(probe, "test").unwrap();
    rt.set_budget(total - 1);
    let id = load(rt);
    rt.set_budget(1 << 30);
    let m = rt.model(id).unwrap();
    assert_eq!(m.weights.resident_blocks(), 0, "every block streams");
    id
}

fn weight(rt: &Runtime, id: ModelId, name: &str) -> Tensor {
    rt.model(id)
        .unwrap()
        .dit()
        .unwrap()
        .resident_weight(name)
        .unwrap_or_else(|| panic!("{name} is not resident"))
}

fn forward(rt: &mut Runtime, id: ModelId, cases: &HashMap<String, Tensor>) -> Tensor {
    rt.predict(
        id,
        &cases["case.x"],
        &cases["case.t"],
        &cases["case.context"],
    )
    .expect("forward")
}

fn cases() -> HashMap<String, Tensor> {
    common::load_fixture("lora_tiny/cases.safetensors")
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn every_format_and_strength_matches_the_merged_weights_and_forward() {
    let cases = cases();
    for strength in [1.0, 0.6] {
        let merged = common::load_fixture(&format!("lora_tiny/merged_{strength:.1}.safetensors"));
        let expected_out = &cases[&format!("case.out_lora_{strength:.1}")];
        for format in FORMATS {
            let mut rt = runtime();
            let id = load(&mut rt);
            rt.apply_lora(id, &lora(format), strength).unwrap();
            let mut worst = 0f64;
            for name in targets() {
                let w = weight(&rt, id, &name);
                worst = worst.max(common::rel_l2(&w, &merged[&name]));
                common::assert_close(
                    &w,
                    &merged[&name],
                    1e-5,
                    &format!("{format} {strength} {name}"),
                );
            }
            println!("{format} @ {strength}: weights worst rel L2 {worst:.2e}");
            let out = forward(&mut rt, id, &cases);
            report_close(
                &out,
                expected_out,
                1e-5,
                &format!("{format} {strength} forward"),
            );
        }
    }
}

#[test]
fn untargeted_weights_stay_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime();
    let id = load(&mut rt);
    let before: Vec<Vec<u32>> = targets()
        .iter()
        .map(|n| bits(&weight(&rt, id, n)))
        .collect();
    let p = write_lora(
        dir.path(),
        "one.safetensors",
        &[
            (
                "lora_unet_blocks_1_cross_attn_v.lora_down.weight",
                randn(&[2, 48]),
            ),
            (
                "lora_unet_blocks_1_cross_attn_v.lora_up.weight",
                randn(&[48, 2]),
            ),
        ],
    );
    rt.apply_lora(id, &p, 1.0).unwrap();
    for (name, b) in targets().iter().zip(&before) {
        let same = bits(&weight(&rt, id, name)) == *b;
        assert_eq!(same, name != "blocks.1.cross_attn.v.weight", "{name}");
    }
}

#[test]
fn streamed_blocks_get_the_lora_as_they_stream() {
    let cases = cases();
    let mut rt = runtime();
    let full = load(&mut rt);
    rt.apply_lora(full, &lora("lora_musubi"), 0.6).unwrap();
    let resident_out = forward(&mut rt, full, &cases);
    rt.delete_model(full, "test").unwrap();

    let id = load_streamed(&mut rt);
    let base_out = forward(&mut rt, id, &cases);
    rt.apply_lora(id, &lora("lora_musubi"), 0.6).unwrap();
    let out = forward(&mut rt, id, &cases);
    common::assert_close(&out, &cases["case.out_lora_0.6"], 1e-5, "streamed forward");
    assert_eq!(
        bits(&out),
        bits(&resident_out),
        "streamed == resident, bit for bit"
    );
    rt.remove_lora(id, &lora("lora_musubi")).unwrap();
    assert_eq!(
        bits(&forward(&mut rt, id, &cases)),
        bits(&base_out),
        "streamed remove"
    );
}

#[test]
fn stacked_loras_add_and_removing_one_keeps_the_other() {
    let cases = cases();
    let merged = common::load_fixture("lora_tiny/merged_1.0.safetensors");
    let mut rt = runtime();
    let id = load(&mut rt);
    // 0.6 + 0.4 of the same delta from two files = strength 1.0.
    rt.apply_lora(id, &lora("lora_comfy_kohya"), 0.6).unwrap();
    rt.apply_lora(id, &lora("lora_diffusers_peft"), 0.4)
        .unwrap();
    for name in targets() {
        common::assert_close(&weight(&rt, id, &name), &merged[&name], 1e-5, &name);
    }
    let out = forward(&mut rt, id, &cases);
    common::assert_close(&out, &cases["case.out_lora_1.0"], 1e-5, "stacked forward");
    let used = rt.ledger().used();

    rt.remove_lora(id, &lora("lora_comfy_kohya")).unwrap();
    let mut only = runtime();
    let other = load(&mut only);
    only.apply_lora(other, &lora("lora_diffusers_peft"), 0.4)
        .unwrap();
    for name in targets() {
        assert_eq!(
            bits(&weight(&rt, id, &name)),
            bits(&weight(&only, other, &name)),
            "{name}: after removing the first LoRA, as if only the second was applied"
        );
    }
    assert!(
        rt.ledger().used() < used,
        "the removed LoRA's factors leave the ledger"
    );
}

#[test]
fn remove_restores_the_loaded_weights_bit_for_bit() {
    let cases = cases();
    let mut rt = runtime();
    let id = load(&mut rt);
    let used = rt.ledger().used();
    let before: Vec<Vec<u32>> = targets()
        .iter()
        .map(|n| bits(&weight(&rt, id, n)))
        .collect();
    let out_before = forward(&mut rt, id, &cases);
    for format in FORMATS {
        rt.apply_lora(id, &lora(format), 0.6).unwrap();
    }
    assert!(rt.ledger().used() > used, "LoRA factors are counted");
    assert_eq!(rt.ledger().get(id).unwrap().lora, rt.ledger().used() - used);
    for format in FORMATS.iter().rev() {
        rt.remove_lora(id, &lora(format)).unwrap();
    }
    let after: Vec<Vec<u32>> = targets()
        .iter()
        .map(|n| bits(&weight(&rt, id, n)))
        .collect();
    assert!(before == after, "weights differ after remove");
    assert_eq!(bits(&forward(&mut rt, id, &cases)), bits(&out_before));
    assert_eq!(rt.ledger().used(), used);
}

/// Writes a LoRA file with the given tensors.
fn write_lora(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> String {
    let path = dir.join(name);
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&map, &path).unwrap();
    path.display().to_string()
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

#[test]
fn errors_name_the_problem_and_leave_the_model_as_it_was() {
    let cases = cases();
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime();
    let id = load(&mut rt);
    rt.apply_lora(id, &lora("lora_original_peft"), 1.0).unwrap();
    let out = forward(&mut rt, id, &cases);
    let used = rt.ledger().used();
    let unchanged = |rt: &mut Runtime| {
        assert_eq!(bits(&forward(rt, id, &cases)), bits(&out), "model changed");
        assert_eq!(rt.ledger().used(), used, "ledger changed");
    };

    // Shape mismatch: a valid first layer, then a wrong one (all or nothing).
    let p = write_lora(
        dir.path(),
        "shape.safetensors",
        &[
            (
                "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
                randn(&[4, 48]),
            ),
            (
                "diffusion_model.blocks.0.self_attn.q.lora_up.weight",
                randn(&[48, 4]),
            ),
            (
                "diffusion_model.blocks.1.ffn.0.lora_down.weight",
                randn(&[4, 40]),
            ),
            (
                "diffusion_model.blocks.1.ffn.0.lora_up.weight",
                randn(&[64, 4]),
            ),
        ],
    );
    let e = rt.apply_lora(id, &p, 1.0).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("blocks.1.ffn.0") && e.contains("[4, 40]") && e.contains("[64, 48]"),
        "{e}"
    );
    unchanged(&mut rt);

    // Rank mismatch between the factors.
    let p = write_lora(
        dir.path(),
        "rank.safetensors",
        &[
            (
                "lora_unet_blocks_0_self_attn_q.lora_down.weight",
                randn(&[4, 48]),
            ),
            (
                "lora_unet_blocks_0_self_attn_q.lora_up.weight",
                randn(&[48, 8]),
            ),
        ],
    );
    let e = rt.apply_lora(id, &p, 1.0).unwrap_err().to_string();
    assert!(
        e.contains("lora_unet_blocks_0_self_attn_q") && e.contains("[48, 8]"),
        "{e}"
    );
    unchanged(&mut rt);

    // A LoRA for another model (I2V image projections, block 30).
    let p = write_lora(
        dir.path(),
        "nothing.safetensors",
        &[
            (
                "diffusion_model.blocks.30.self_attn.q.lora_down.weight",
                randn(&[4, 48]),
            ),
            (
                "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight",
                randn(&[48, 4]),
            ),
        ],
    );
    let e = rt.apply_lora(id, &p, 1.0).unwrap_err().to_string();
    assert!(e.contains("targets nothing"), "{e}");
    unchanged(&mut rt);

    // Not a safetensors file; a missing file.
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"this is not a safetensors file at all").unwrap();
    let e = rt
        .apply_lora(id, &bad.display().to_string(), 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.safetensors"), "{e}");
    let e = rt
        .apply_lora(id, "no/such/lora.safetensors", 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found"), "{e}");
    unchanged(&mut rt);

    // The same file twice; removing one never applied; a NaN strength.
    let e = rt
        .apply_lora(id, &lora("lora_original_peft"), 0.5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already applied"), "{e}");
    let e = rt
        .remove_lora(id, &lora("lora_musubi"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not applied") && e.contains("lora_original_peft"),
        "{e}"
    );
    let e = rt
        .apply_lora(id, &lora("lora_musubi"), f64::NAN)
        .unwrap_err()
        .to_string();
    assert!(e.contains("finite"), "{e}");
    unchanged(&mut rt);

    // A deleted model.
    rt.delete_model(id, "script.rhai:9").unwrap();
    let e = rt
        .apply_lora(id, &lora("lora_musubi"), 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("deleted at script.rhai:9"), "{e}");
    let e = rt
        .remove_lora(id, &lora("lora_original_peft"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("deleted at script.rhai:9"), "{e}");
}

#[test]
fn unknown_keys_are_kept_for_the_warning_and_diff_keys_apply() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime();
    let id = load(&mut rt);
    let base_w = weight(&rt, id, "blocks.0.ffn.2.weight");
    let diff = randn(&[48, 64]);
    let p = write_lora(
        dir.path(),
        "diff.safetensors",
        &[
            ("diffusion_model.blocks.0.ffn.2.diff", diff.clone()),
            ("diffusion_model.blocks.0.ffn.2.diff_b", randn(&[48])),
            (
                "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight",
                randn(&[4, 48]),
            ),
        ],
    );
    let source = rt.model(id).unwrap().dit().unwrap().source().clone();
    let l = baton::lora::Lora::load(Path::new(&p), source.entries()).unwrap();
    assert_eq!(
        l.unknown_keys,
        vec!["diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight".to_string()]
    );
    rt.apply_lora(id, &p, 0.5).unwrap();
    let want = (&base_w + (&diff * 0.5).unwrap()).unwrap();
    common::assert_close(
        &weight(&rt, id, "blocks.0.ffn.2.weight"),
        &want,
        1e-6,
        "diff",
    );
    rt.remove_lora(id, "diff.safetensors").unwrap();
    assert_eq!(
        bits(&weight(&rt, id, "blocks.0.ffn.2.weight")),
        bits(&base_w)
    );
}

#[test]
fn scripts_apply_list_and_remove_loras() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = common::session_with(None, dir.path());
    let r = common::eval(
        &mut s,
        r#"
        let m = load_model("tests/fixtures/wan_tiny/original.safetensors", #{ heads: 2, name: "high" });
        let before = vram().used;
        let m2 = apply_lora(m, "tests/fixtures/lora_tiny/lora_musubi.safetensors", 0.6);
        apply_lora(m2, "tests/fixtures/lora_tiny/lora_comfy_kohya.safetensors");
        let v = vram();
        let l = v.models[0].loras;
        let grew = v.used - before;
        remove_lora(m, "tests/fixtures/lora_tiny/lora_musubi.safetensors");
        let table = `${vram()}`;
        [l.len(), l[0].name, l[0].strength, l[1].strength, grew, vram().models[0].loras.len(), table]
        "#,
    );
    let a = r.into_array().unwrap();
    assert_eq!(a[0].as_int().unwrap(), 2);
    assert_eq!(a[1].clone().into_string().unwrap(), "lora_musubi");
    assert!((a[2].as_float().unwrap() - 0.6).abs() < 1e-6);
    assert_eq!(a[3].as_float().unwrap(), 1.0);
    assert!(a[4].as_int().unwrap() > 0, "the ledger counts LoRA factors");
    assert_eq!(a[5].as_int().unwrap(), 1);
    println!("{}", a[6]);
    let e = common::eval_err(
        &mut s,
        r#"let m = load_model("tests/fixtures/wan_tiny/original_low.safetensors", #{ heads: 2 });
           apply_lora(m, "tests/fixtures/lora_tiny/lora_musubi.safetensors", "strong")"#,
    );
    assert!(e.contains("strength must be a number"), "{e}");
}

#[test]
fn two_stage_applies_a_lora_per_expert_like_the_manual_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = common::session_with(None, dir.path());
    let r = common::eval(
        &mut s,
        r#"
        import "stdlib/wan22" as wan;
        let d = "tests/fixtures/wan_tiny";
        let l = "tests/fixtures/lora_tiny";
        let c = load_tensors(`${l}/cases.safetensors`);
        let ctx = c["case.context"];
        let x0 = zeros_like(c["case.x"]);
        // The lightx2v 4-step setup: shift 5, cfg 1, 4 steps split at 2.
        let o = #{ positive: ctx, steps: 4, split: 2, cfg_high: 1.0, cfg_low: 1.0, shift: 5.0,
                   seed: 7, load: #{ heads: 2 },
                   lora_high: [`${l}/lora_musubi.safetensors`, 0.6],
                   lora_low: `${l}/lora_comfy_kohya.safetensors` };
        let a = wan::two_stage(`${d}/original.safetensors`, `${d}/original_low.safetensors`, x0, o);
        let left = loaded_models().len();

        let high = apply_lora(load_model(`${d}/original.safetensors`, #{ heads: 2 }),
                              `${l}/lora_musubi.safetensors`, 0.6);
        let x = sample(high, x0, #{ positive: ctx, steps: 4, end: 2, cfg: 1.0, shift: 5.0,
                                    seed: 7, add_noise: true, leftover_noise: true });
        delete_model(high);
        let low = apply_lora(load_model(`${d}/original_low.safetensors`, #{ heads: 2 }),
                             `${l}/lora_comfy_kohya.safetensors`);
        x = sample(low, x, #{ positive: ctx, steps: 4, start: 2, cfg: 1.0, shift: 5.0,
                              seed: 7, add_noise: false });
        delete_model(low);
        let plain = wan::two_stage(`${d}/original.safetensors`, `${d}/original_low.safetensors`, x0,
                                   #{ positive: ctx, steps: 4, split: 2, cfg_high: 1.0, cfg_low: 1.0,
                                      shift: 5.0, seed: 7, load: #{ heads: 2 } });
        [max_abs(a - x), max_abs(a - plain), left]
        "#,
    );
    let a = r.into_array().unwrap();
    assert_eq!(common::as_f64(a[0].clone()), 0.0, "two_stage == manual");
    assert!(
        common::as_f64(a[1].clone()) > 1e-3,
        "the LoRAs change the result"
    );
    assert_eq!(a[2].as_int().unwrap(), 0, "two_stage leaves nothing loaded");
}

/// A kohya-format random LoRA on every block linear of `cfg`.
fn random_lora(cfg: &baton::models::wan::WanConfig, path: &Path) {
    let mut t = HashMap::new();
    let (d, f) = (cfg.dim, cfg.ffn_dim);
    for n in 0..cfg.num_layers {
        let mut linears: Vec<(String, usize, usize)> =
            MODULES[..8].iter().map(|m| (m.to_string(), d, d)).collect();
        linears.push(("ffn.0".into(), f, d));
        linears.push(("ffn.2".into(), d, f));
        for (m, out, inp) in linears {
            let k = format!("diffusion_model.blocks.{n}.{m}");
            t.insert(
                format!("{k}.lora_down.weight"),
                (randn(&[4, inp]) * 0.1).unwrap(),
            );
            t.insert(
                format!("{k}.lora_up.weight"),
                (randn(&[out, 4]) * 0.1).unwrap(),
            );
            t.insert(
                format!("{k}.alpha"),
                Tensor::new(8f32, &Device::Cpu).unwrap(),
            );
        }
    }
    candle_core::safetensors::save(&t, path).unwrap();
}

#[test]
fn partly_streamed_model_gives_the_resident_forward_bit_for_bit() {
    use baton::models::wan::WanConfig;
    let dir = tempfile::tempdir().unwrap();
    let cfg = WanConfig {
        num_layers: 4,
        ..WanConfig::fixture_tiny()
    };
    let model = dir.path().join("four.safetensors");
    baton::runtime::builtin::write_tiny(&model, &cfg, 3, "four-blocks").unwrap();
    let lora_path = dir.path().join("lora.safetensors");
    random_lora(&cfg, &lora_path);
    let (model, lora_path) = (model.display().to_string(), lora_path.display().to_string());
    let header = baton::checkpoint::Header::read(Path::new(&model)).unwrap();
    let block: u64 = header
        .tensors
        .iter()
        .filter(|(k, _)| k.starts_with("blocks.0."))
        .map(|(_, e)| e.numel() as u64 * 4)
        .sum();
    let opts = LoadOptions {
        dtype: Some(DType::F32),
        ..Default::default()
    };
    let cases = cases();
    let run = |budget: Option<u64>| -> (Tensor, Tensor, usize) {
        let mut rt = runtime();
        let probe = rt.load_model(&model, &opts, "t").unwrap();
        let total = rt.model_bytes(probe).unwrap();
        rt.delete_model(probe, "t").unwrap();
        // Stem + two read-ahead stream buffers + 1 of the 4 blocks.
        rt.set_budget(budget.map_or(1 << 30, |_| total - block));
        let id = rt.load_model(&model, &opts, "t").unwrap();
        let resident = rt.model(id).unwrap().weights.resident_blocks();
        rt.set_budget(1 << 30);
        let base = forward(&mut rt, id, &cases);
        rt.apply_lora(id, &lora_path, 0.7).unwrap();
        let with = forward(&mut rt, id, &cases);
        rt.remove_lora(id, &lora_path).unwrap();
        assert_eq!(
            bits(&forward(&mut rt, id, &cases)),
            bits(&base),
            "remove restores"
        );
        (base, with, resident)
    };
    let (base, with, all) = run(None);
    let (p_base, p_with, part) = run(Some(0));
    assert_eq!(
        (all, part),
        (4, 1),
        "resident blocks: whole vs partial load"
    );
    assert_eq!(bits(&p_base), bits(&base));
    assert_eq!(
        bits(&p_with),
        bits(&with),
        "resident and streamed blocks merge alike"
    );
    assert!(
        common::max_abs_diff(&with, &base) > 1e-3,
        "the LoRA changes the output"
    );
}

#[test]
fn bf16_models_round_the_merged_weight_once_and_restore_exactly() {
    let merged = common::load_fixture("lora_tiny/merged_1.0.safetensors");
    let mut rt = runtime();
    let opts = LoadOptions {
        heads: Some(2),
        dtype: Some(DType::BF16),
        ..Default::default()
    };
    let id = rt.load_model(MODEL, &opts, "test").unwrap();
    let before: Vec<Vec<u32>> = targets()
        .iter()
        .map(|n| bits(&weight(&rt, id, n).to_dtype(DType::F32).unwrap()))
        .collect();
    rt.apply_lora(id, &lora("lora_comfy_kohya"), 1.0).unwrap();
    for name in targets() {
        let w = weight(&rt, id, &name);
        assert_eq!(w.dtype(), DType::BF16, "stays in the storage dtype");
        // bf16 keeps 8 bits of mantissa: ~4e-3 relative per element.
        common::assert_close(
            &w.to_dtype(DType::F32).unwrap(),
            &merged[&name],
            5e-3,
            &name,
        );
    }
    rt.remove_lora(id, &lora("lora_comfy_kohya")).unwrap();
    let after: Vec<Vec<u32>> = targets()
        .iter()
        .map(|n| bits(&weight(&rt, id, n).to_dtype(DType::F32).unwrap()))
        .collect();
    assert!(before == after, "bf16 weights differ after remove");
}

#[test]
fn loras_on_stem_layers_rebuild_the_stem_and_come_off_exactly() {
    let cases = cases();
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime();
    let id = load(&mut rt);
    let base = forward(&mut rt, id, &cases);
    // diffusers names for the text embedding and the output head.
    let p = write_lora(
        dir.path(),
        "stem.safetensors",
        &[
            (
                "transformer.condition_embedder.text_embedder.linear_1.lora_A.weight",
                randn(&[4, 32]),
            ),
            (
                "transformer.condition_embedder.text_embedder.linear_1.lora_B.weight",
                randn(&[48, 4]),
            ),
            ("transformer.proj_out.lora_A.weight", randn(&[4, 48])),
            (
                "transformer.proj_out.lora_B.weight",
                (randn(&[64, 4]) * 0.1).unwrap(),
            ),
        ],
    );
    rt.apply_lora(id, &p, 1.0).unwrap();
    let with = forward(&mut rt, id, &cases);
    assert!(
        common::max_abs_diff(&with, &base) > 1e-3,
        "the stem LoRA changes the output"
    );
    rt.remove_lora(id, &p).unwrap();
    assert_eq!(bits(&forward(&mut rt, id, &cases)), bits(&base));
}
