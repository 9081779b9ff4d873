//! Sigma schedules, the KSamplerAdvanced cut rule and the euler sampler against ComfyUI
//! (tests/fixtures/comfy, produced by ComfyUI's own nodes; README there gives every formula).
//!
//! The diffusion network is replaced by the fixtures' analytic velocity field (README §4),
//! so a whole KSampler(Advanced) pass can be reproduced here and compared step by step.
mod common;

use baton::sampling::{ksampler, noise, sigmas};
use candle_core::{Device, Tensor};
use common::comfy::*;
use std::collections::HashMap;

// ---------------------------------------------------------------------------
// 1. schedules

#[test]
fn simple_schedule_bit_exact() {
    let js = load_json("comfy/sigmas.json");
    let mut n = 0;
    for case in js["cases"].as_array().unwrap() {
        if case["scheduler"] != "simple" {
            continue;
        }
        let steps = case["steps"].as_u64().unwrap() as usize;
        let shift = case["shift"].as_f64().unwrap() as f32;
        let want = f32_list(case, "sigmas");
        let got = sigmas::schedule("simple", steps, shift).unwrap();
        // README §7: the simple schedule only indexes the table, so it is exact.
        assert!(
            same_list(&got, &want),
            "simple steps {steps} shift {shift}:\n got {got:?}\nwant {want:?}"
        );
        // Samplers in discard_penultimate_samplers (uni_pc, dpm_2, …) get steps+1 sigmas
        // with the second-to-last dropped; check that derivation too (used for uni_pc below).
        let dp = discard_penultimate(steps, shift);
        let want_dp = f32_list(case, "sigmas_discard_penultimate");
        assert!(
            same_list(&dp, &want_dp),
            "simple discard-penultimate steps {steps} shift {shift}:\n got {dp:?}\nwant {want_dp:?}"
        );
        // The table indices the scheduler picked.
        let table = sigmas::flow_table(shift);
        for (i, idx) in case["simple_table_indices"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            assert_eq!(
                got[i].to_bits(),
                table[idx.as_u64().unwrap() as usize].to_bits()
            );
        }
        n += 1;
    }
    assert_eq!(n, 16, "expected 4 steps × 4 shifts simple cases");
}

fn discard_penultimate(steps: usize, shift: f32) -> Vec<f32> {
    let mut s = sigmas::schedule("simple", steps + 1, shift).unwrap();
    let k = s.len() - 2;
    s.remove(k);
    s
}

#[test]
fn flow_table_bit_exact() {
    let fx = common::load_fixture("comfy/sigmas_tables.safetensors");
    let js = load_json("comfy/sigmas.json");
    for shift in [1u32, 5, 8, 12] {
        let want = vec_of(&fx[&format!("sigmas_table_shift_{shift}")]);
        let got = sigmas::flow_table(shift as f32);
        let bad = (0..1000)
            .filter(|&i| got[i].to_bits() != want[i].to_bits())
            .count();
        // README §1/§7: f32 ops in a fixed order, no transcendentals: exact.
        assert_eq!(bad, 0, "flow_table({shift}): {bad} of 1000 entries differ");
        let t = &js["tables"][format!("shift_{shift}")];
        assert_eq!(got[0], t["sigma_min"].as_f64().unwrap() as f32);
        assert_eq!(got[999], 1.0);
    }
}

#[test]
fn shift_and_timestep() {
    assert_eq!(sigmas::shift_sigma(1.0, 0.3), 0.3);
    assert_eq!(sigmas::shift_sigma(5.0, 1.0), 1.0);
    // σ·1000 is the network timestep, not the inverse of the shifted schedule.
    assert_eq!(sigmas::timestep(0.75), 750.0);
    assert_eq!(sigmas::timestep(1.0), 1000.0);
    assert!(sigmas::schedule("simple", 0, 8.0).is_err());
    assert!(sigmas::schedule("nonexistent", 8, 8.0).is_err());
}

// ---------------------------------------------------------------------------
// 2. the KSamplerAdvanced cut rule

/// ComfyUI's end_at_step 10000 means "to the end"; any value >= steps behaves the same.

#[test]
fn ksampler_advanced_cut_rule() {
    let js = load_json("comfy/ksampler_split.json");
    let steps = js["steps"].as_u64().unwrap() as usize;
    let shift = js["shift"].as_f64().unwrap() as f32;
    let euler_full = sigmas::schedule("simple", steps, shift).unwrap();
    assert!(same_list(
        &euler_full,
        &f32_list(&js["full_sigmas"], "euler")
    ));
    // uni_pc is a discard-penultimate sampler: its full list is simple(steps+1) minus the
    // second-to-last entry. The cut rule itself does not depend on the sampler, so those
    // cases are checked too with that list (the uni_pc passes are in sampling_unipc.rs).
    let unipc_full = discard_penultimate(steps, shift);
    assert!(same_list(
        &unipc_full,
        &f32_list(&js["full_sigmas"], "uni_pc")
    ));

    let mut checked = HashMap::<&str, usize>::new();
    for case in js["cases"].as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        let sampler = case["sampler"].as_str().unwrap();
        let full = match sampler {
            "euler" => &euler_full,
            "uni_pc" => &unipc_full,
            other => panic!("unexpected sampler {other}"),
        };
        let start = case["start_at_step"].as_u64().unwrap() as usize;
        let end = end_arg(case["end_at_step"].as_u64().unwrap());
        let leftover = case["return_with_leftover_noise"] == "enable";
        let got = ksampler::cut(full, start, end, leftover);
        // Passing end_at_step literally (Some(10000)) must behave the same as None.
        let literal = ksampler::cut(
            full,
            start,
            Some(case["end_at_step"].as_u64().unwrap() as usize),
            leftover,
        );
        assert_eq!(got, literal, "{key}: end Some(10000) vs None");
        if case["output_equals_input_latent"].as_bool().unwrap() {
            assert!(got.is_none(), "{key}: expected no sampling, got {got:?}");
        } else {
            let want = f32_list(case, "sigmas_in");
            let got = got.unwrap_or_else(|| panic!("{key}: cut returned None"));
            assert!(
                same_list(&got, &want),
                "{key}:\n got {got:?}\nwant {want:?}"
            );
        }
        *checked.entry(sampler).or_default() += 1;
    }
    assert_eq!(checked["euler"], 13);
    assert_eq!(checked["uni_pc"], 13);
}

/// Every euler case of ksampler_split run through the pass composition: sampler_out
/// bit-exact, and the node output where it does not involve `process_latent_out`.
#[test]
fn ksampler_advanced_euler_passes() {
    let js = load_json("comfy/ksampler_split.json");
    let fx = common::load_fixture("comfy/ksampler_split.safetensors");
    let steps = js["steps"].as_u64().unwrap() as usize;
    let shift = js["shift"].as_f64().unwrap() as f32;
    let seed = js["seed"].as_u64().unwrap();
    let full = sigmas::schedule("simple", steps, shift).unwrap();

    let init = noise::torch_randn(seed, 2048);
    let init = Tensor::from_vec(init, (1, 16, 2, 8, 8), &Device::Cpu).unwrap();
    assert_bit_exact(&init, &fx["initial_noise"], "initial_noise");

    // Same f32 operations as ComfyUI (README §7: euler is bit-exact), and
    // process_latent_out is two exact-order f32 ops, so the node output matches too.
    assert_eq!(check_ksampler_split("euler", &full, 0.0), 13);
}

#[test]
fn euler_trace_bit_exact() {
    let t = trace_setup();
    let pass = t.run(&zeros_latent(), 0, None, true, 1.0);
    assert_pass_bit_exact(&pass, &t.fx, "trace.euler");
    let out = pass.out.unwrap();
    assert_bit_exact(
        &t.model.process_out(&out),
        &t.fx["trace.euler.node_out"],
        "trace.euler.node_out",
    );
}

#[test]
fn euler_cfg35_trace_bit_exact() {
    let t = trace_setup();
    assert!(same_list(&t.full, &vec_of(&t.fx["cfg3.5.euler.sigmas_in"])));
    let pass = t.run(&zeros_latent(), 0, None, true, 3.5);
    assert_pass_bit_exact(&pass, &t.fx, "cfg3.5.euler");
    // cfg actually matters here: the cfg 1 run must differ.
    assert!(count_diff(pass.out.as_ref().unwrap(), &t.fx["trace.euler.sampler_out"]) > 0);
}

#[test]
fn euler_two_pass_split() {
    let t = trace_setup();
    let fx = &t.fx;
    let single = fx["trace.euler.sampler_out"].clone();
    let single_x = &fx["trace.euler.x"];

    // Pass 1: add_noise enable, 0..4, leftover enable.
    let p1 = t.run(&zeros_latent(), 0, Some(4), true, 1.0);
    assert!(same_list(
        &ksampler::cut(&t.full, 0, Some(4), true).unwrap(),
        &vec_of(&fx["split.euler.pass1.sigmas_in"])
    ));
    assert_pass_bit_exact(&p1, fx, "split.euler.pass1");
    let p1_out = p1.out.unwrap();
    assert_bit_exact(
        &t.model.process_out(&p1_out),
        &fx["split.euler.pass1.node_out"],
        "pass1.node_out",
    );

    // Pass 2 exactly as ComfyUI runs it: process_in(pass 1 node output), add_noise disable,
    // 4..10000. Bit-exact against the stored pass.
    let latent_in = t.model.process_in(&fx["split.euler.pass1.node_out"]);
    assert_bit_exact(
        &latent_in,
        &fx["split.euler.pass2.latent_in"],
        "pass2.latent_in",
    );
    let p2 = t.run(&latent_in, 4, None, false, 1.0);
    assert!(same_list(
        &ksampler::cut(&t.full, 4, None, false).unwrap(),
        &vec_of(&fx["split.euler.pass2.sigmas_in"])
    ));
    assert_pass_bit_exact(&p2, fx, "split.euler.pass2");

    // Pass 2 as baton runs it: latents stay in model space, pass 1's sampler output goes
    // straight in. x = (1−σ4)·(x4/(1−σ4)) recovers x4 up to one rounding each way.
    let p2b = t.run(&p1_out, 4, None, false, 1.0);
    let start_vs_single = common::max_abs_diff(&p2b.x[0], &single_x.get(4).unwrap());
    let start_vs_comfy =
        common::max_abs_diff(&p2b.x[0], &fx["split.euler.pass2.x"].get(0).unwrap());
    let out_b = p2b.out.unwrap();
    let final_vs_single = common::max_abs_diff(&out_b, &single);
    let final_vs_comfy = common::max_abs_diff(&out_b, &fx["split.euler.pass2.sampler_out"]);
    let comfy_vs_single = common::max_abs_diff(&fx["split.euler.pass2.sampler_out"], &single);
    println!(
        "baton split: start vs single x[4] {start_vs_single:.2e}, vs ComfyUI pass2 x[0] {start_vs_comfy:.2e}; \
         final vs single {final_vs_single:.2e}, vs ComfyUI pass2 {final_vs_comfy:.2e} \
         (ComfyUI's own split vs single {comfy_vs_single:.2e}, rel L2 {:.2e})",
        common::rel_l2(&out_b, &single)
    );
    // |x| ≤ ~4 here (ulp 2.4e-7..4.8e-7); the (1−σ4) round trip costs about one rounding,
    // which the remaining 4 steps carry through. Measured: start 2.4e-7, final 4.8e-7 vs the
    // single run and 6.0e-7 vs ComfyUI's pass 2 (ComfyUI's own split vs single: 6.0e-7 on
    // sampler_out, 1.2e-6 on node_out). 1e-6 / 2e-6 leave room for ~2-4 ulp.
    assert_max_abs(
        &p2b.x[0],
        &single_x.get(4).unwrap(),
        1e-6,
        "baton pass2 start vs single x[4]",
    );
    assert_max_abs(&out_b, &single, 2e-6, "baton split vs single run");
    assert_max_abs(
        &out_b,
        &fx["split.euler.pass2.sampler_out"],
        2e-6,
        "baton split vs ComfyUI split",
    );
    println!(
        "ComfyUI node_out split vs single: max abs {:.2e}",
        common::max_abs_diff(
            &fx["split.euler.pass2.node_out"],
            &fx["trace.euler.node_out"]
        )
    );
    // And the ComfyUI split itself vs the single run, as the README reports it.
    assert_max_abs(
        &fx["split.euler.pass2.sampler_out"],
        &single,
        2e-6,
        "ComfyUI split vs single",
    );
}

/// Two passes split at step k (pass 2 from pass 1's output, add_noise off) reproduce the
/// one-pass run for any k.
#[test]
fn euler_split_at_k_matches_single_pass() {
    let t = trace_setup();
    let latent = zeros_latent();
    for cfg in [1.0, 3.5] {
        let single = t.run(&latent, 0, None, true, cfg).out.unwrap();
        for k in [1usize, 2, 4, 6, 7] {
            let p1 = t.run(&latent, 0, Some(k), true, cfg).out.unwrap();
            let p2 = t.run(&p1, k, None, false, cfg).out.unwrap();
            let d = common::max_abs_diff(&p2, &single);
            println!(
                "cfg {cfg} split at {k}: max abs {d:.2e}, rel L2 {:.2e}, {} of 2048 differ",
                common::rel_l2(&p2, &single),
                count_diff(&p2, &single)
            );
            // The only difference is the rounding of x_k/(1−σ_k)·(1−σ_k) at the pass boundary,
            // carried through the remaining steps: measured ≤ 1.19e-6 (cfg 3.5, |x| up to 4.9,
            // where one ulp is 4.8e-7; rel L2 ≤ 1.0e-7), so allow 2e-6 ≈ 4 ulp and rel L2
            // 3e-7; a real slip (wrong σ, step or noise) would be ≥ 1e-3.
            assert_max_abs(&p2, &single, 2e-6, &format!("cfg {cfg} split at {k}"));
            assert!(
                common::rel_l2(&p2, &single) <= 3e-7,
                "cfg {cfg} split at {k}: rel L2"
            );
            if k == 2 {
                // 1 − σ_2 = 0.0625 is a power of two, so the round trip is exact and so is
                // the split: evidence that rounding at the boundary is the whole story.
                assert_bit_exact(&p2, &single, &format!("cfg {cfg} split at 2"));
            }
        }
    }
    // Splitting at the last step or later runs nothing in pass 2: output = input.
    assert!(ksampler::cut(&t.full, 8, None, false).is_none());
}
