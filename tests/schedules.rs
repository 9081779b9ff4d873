//! Every sigma schedule `sigmas::schedule` offers, against golden lists.
//!
//! * `tests/fixtures/comfy/sigmas.json`: made by ComfyUI's own `KSampler` (commit
//!   a125cd8, torch CPU float32) for every ComfyUI scheduler × steps {4, 8, 20, 30} ×
//!   shift {1, 5, 8, 12}, including the list the discard-penultimate samplers (uni_pc, …)
//!   get and the table indices `simple`/`beta` picked. Its README (§2, §7) says a port
//!   with correctly rounded libm is bit-exact for all but `exponential`/`kl_optimal`,
//!   whose torch exp/tan may differ by an ulp; that is what is asserted.
//! * `tests/fixtures/schedulers.json`: diffusers 0.42.1 `FlowMatchEulerDiscreteScheduler`,
//!   `UniPCMultistepScheduler` (flow sigmas) and the original Wan
//!   `FlowUniPCMultistepScheduler`, steps {4, 20, 40} × shift {1, 5, 8, 12}, with the
//!   timesteps each feeds the model. Computed in numpy float64 and cast once, so the
//!   f32 sigmas are asserted bit-exact.
//!
//! Besides the fixtures: every scheduler at awkward step counts (1, 2, past the table
//! size) must give a finite, non-increasing list ending in 0 without panicking.
mod common;

use baton::sampling::{schedules, sigmas};
use common::comfy::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// ComfyUI schedulers whose fixture lists a correctly rounded port reproduces exactly.
const COMFY_BIT_EXACT: &[&str] = &[
    "simple",
    "normal",
    "sgm_uniform",
    "karras",
    "ddim_uniform",
    "beta",
    "linear_quadratic",
];
/// ComfyUI schedulers allowed one ulp per element (torch's f32 exp / tan).
const COMFY_ONE_ULP: &[&str] = &["exponential", "kl_optimal"];

fn case_key(case: &Value) -> (String, usize, f32) {
    (
        case["scheduler"].as_str().unwrap().to_string(),
        case["steps"].as_u64().unwrap() as usize,
        case["shift"].as_f64().unwrap() as f32,
    )
}

/// Distance in units in the last place between two finite f32 of the same sign.
fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    assert!(
        a.is_finite() && b.is_finite() && a.is_sign_negative() == b.is_sign_negative(),
        "{a} vs {b}"
    );
    a.to_bits().abs_diff(b.to_bits())
}

/// Checks `got` against `want`: same length, every element within 1e-6 absolute and
/// `max_ulps`. Returns whether the lists are bit-identical.
fn check(got: &[f32], want: &[f32], max_ulps: u32, what: &str) -> bool {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length\n got {got:?}\nwant {want:?}"
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(
            d <= 1e-6 && ulps(*g, *w) <= max_ulps,
            "{what}[{i}]: {g:e} vs {w:e} (|diff| {d:.3e}, {} ulps)\n got {got:?}\nwant {want:?}",
            ulps(*g, *w)
        );
    }
    same_list(got, want)
}

#[test]
fn comfy_schedules_match_ksampler() {
    let js = load_json("comfy/sigmas.json");
    // scheduler -> (cases, bit-exact full lists, bit-exact discard-penultimate lists)
    let mut tally: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for case in js["cases"].as_array().unwrap() {
        let (name, steps, shift) = case_key(case);
        assert!(
            sigmas::SCHEDULERS.contains(&name.as_str()),
            "{name} missing from SCHEDULERS"
        );
        let exact = COMFY_BIT_EXACT.contains(&name.as_str());
        assert!(
            exact || COMFY_ONE_ULP.contains(&name.as_str()),
            "no tolerance class for {name}"
        );
        let max_ulps = if exact { 0 } else { 1 };
        let what = format!("{name} steps {steps} shift {shift}");

        let got = sigmas::schedule(&name, steps, shift).unwrap();
        let full = check(&got, &f32_list(case, "sigmas"), max_ulps, &what);

        // uni_pc is one of ComfyUI's discard_penultimate_samplers.
        let got_dp = sigmas::for_sampler(&name, steps, shift, "uni_pc").unwrap();
        let want_dp = f32_list(case, "sigmas_discard_penultimate");
        let dp = check(&got_dp, &want_dp, max_ulps, &format!("{what} (uni_pc)"));

        let t = tally.entry(name).or_default();
        *t = (t.0 + 1, t.1 + full as usize, t.2 + dp as usize);
    }
    for (name, (n, full, dp)) in &tally {
        println!("{name:>16}: {full}/{n} lists bit-exact, {dp}/{n} discard-penultimate bit-exact");
    }
    // Every ComfyUI scheduler is covered, each by 4 steps × 4 shifts.
    let comfy: Vec<&str> = COMFY_BIT_EXACT
        .iter()
        .chain(COMFY_ONE_ULP)
        .copied()
        .collect();
    assert_eq!(tally.len(), comfy.len());
    for name in comfy {
        assert_eq!(tally[name].0, 16, "{name}: case count");
    }
}

#[test]
fn beta_picks_the_stored_table_indices() {
    let js = load_json("comfy/sigmas.json");
    let mut n = 0;
    for case in js["cases"].as_array().unwrap() {
        let Some(want) = case.get("beta_table_indices").and_then(Value::as_array) else {
            continue;
        };
        let want: Vec<usize> = want.iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let (_, steps, shift) = case_key(case);
        assert_eq!(
            schedules::beta_indices(steps),
            want,
            "beta indices, steps {steps}"
        );
        // And the sigmas are those table entries.
        let table = sigmas::flow_table(shift);
        let got = sigmas::schedule("beta", steps, shift).unwrap();
        for (s, i) in got.iter().zip(&want) {
            assert_eq!(s.to_bits(), table[*i].to_bits());
        }
        n += 1;
    }
    assert_eq!(n, 16);
}

/// (schedulers.json section, our scheduler name)
const DIFFUSERS: &[(&str, &str)] = &[
    ("FlowMatchEulerDiscreteScheduler", "fm_euler"),
    ("UniPCMultistepScheduler", "fm_unipc"),
    ("original_wan_FlowUniPCMultistepScheduler", "wan_unipc"),
];

#[test]
fn diffusers_schedules_match() {
    let js = load_json("schedulers.json");
    for (section, name) in DIFFUSERS {
        let cases = js[section]["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 12, "{section}");
        let mut exact = 0;
        for case in cases {
            let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
            let shift = case["shift"].as_f64().unwrap() as f32;
            let what = format!("{name} steps {steps} shift {shift}");
            let want = f32_list(case, "sigmas");
            assert_eq!(want.len(), steps + 1, "{what}: fixture length");
            let got = sigmas::schedule(name, steps, shift).unwrap();
            exact += check(&got, &want, 0, &what) as usize;
        }
        println!("{name:>10}: {exact}/{} lists bit-exact", cases.len());
        assert_eq!(
            exact,
            cases.len(),
            "{name}: numpy float64 then one cast is exact"
        );
    }
}

#[test]
fn diffusers_model_timesteps_match() {
    let js = load_json("schedulers.json");
    for (section, name) in DIFFUSERS {
        for case in js[section]["cases"].as_array().unwrap() {
            let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
            let shift = case["shift"].as_f64().unwrap() as f32;
            let what = format!("{name} steps {steps} shift {shift}");
            let want = f32_list(case, "timesteps");
            let got = sigmas::schedule(name, steps, shift).unwrap();
            // What the runtime feeds the model: σ·1000 in f32, truncated for unipc_flow.
            let fed: Vec<f32> = got[..steps].iter().map(|&s| sigmas::timestep(s)).collect();
            if *name == "fm_euler" {
                assert!(
                    same_list(&fed, &want),
                    "{what}:\n got {fed:?}\nwant {want:?}"
                );
                continue;
            }
            let truncated: Vec<f32> = fed.iter().map(|t| t.trunc()).collect();
            assert!(
                same_list(&truncated, &want),
                "{what} (trunc of f32 σ·1000):\n got {truncated:?}\nwant {want:?}"
            );
            let exact = sigmas::integer_timesteps(name, steps, shift).unwrap();
            assert!(
                same_list(&exact, &want),
                "{what} (integer_timesteps):\n got {exact:?}\nwant {want:?}"
            );
        }
    }
}

#[test]
fn integer_timesteps_come_from_the_f64_sigma() {
    // linspace(1, 0.001, 4)[2] = 0.33399999999999996: int64 gives 333, but the f32
    // sigma (0.334) times 1000 rounds to 334.0 in f32.
    let ts = sigmas::integer_timesteps("fm_unipc", 3, 1.0).unwrap();
    assert_eq!(ts, vec![999.0, 667.0, 333.0]);
    let s = sigmas::schedule("fm_unipc", 3, 1.0).unwrap();
    assert_eq!(sigmas::timestep(s[2]).trunc(), 334.0);
    assert!(sigmas::integer_timesteps("simple", 3, 1.0).is_err());
}

#[test]
fn every_scheduler_survives_awkward_step_counts() {
    for &name in sigmas::SCHEDULERS {
        for &shift in &[1.0f32, 3.0, 8.0, 12.0] {
            for &steps in &[1usize, 2, 3, 7, 999, 1000, 1001, 2500] {
                let what = format!("{name} steps {steps} shift {shift}");
                let s = sigmas::schedule(name, steps, shift).unwrap();
                assert!(s.len() >= 2, "{what}: {s:?}");
                assert_eq!(*s.last().unwrap(), 0.0, "{what}");
                assert!(
                    s.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
                    "{what}"
                );
                assert!(
                    s.windows(2).all(|w| w[0] >= w[1]),
                    "{what}: not non-increasing"
                );
                if !matches!(name, "ddim_uniform" | "beta") {
                    assert_eq!(s.len(), steps + 1, "{what}");
                }
                let dp = sigmas::for_sampler(name, steps, shift, "uni_pc").unwrap();
                assert_eq!(*dp.last().unwrap(), 0.0, "{what} (uni_pc)");
            }
        }
    }
}

#[test]
fn single_step_schedules() {
    // One step goes from the top of the schedule straight to 0. ComfyUI's kl_optimal
    // would give NaN here (0/0); the others do the same as here.
    for name in [
        "simple",
        "normal",
        "karras",
        "exponential",
        "beta",
        "linear_quadratic",
    ] {
        assert_eq!(
            sigmas::schedule(name, 1, 8.0).unwrap(),
            vec![1.0, 0.0],
            "{name}"
        );
    }
    assert_eq!(
        sigmas::schedule("kl_optimal", 1, 8.0).unwrap(),
        vec![1.0, 0.0]
    );
    assert_eq!(
        sigmas::schedule("fm_euler", 1, 5.0).unwrap(),
        vec![1.0, 0.0]
    );
    let unipc = sigmas::schedule("fm_unipc", 1, 5.0).unwrap();
    assert_eq!(unipc, vec![(1.0f64 - 1e-6) as f32, 0.0]);
}

#[test]
fn ddim_uniform_keeps_comfyui_counts() {
    // Stride 1000/30 = 33 reaches 31 table entries; past 999 steps the stride is 1.
    assert_eq!(sigmas::schedule("ddim_uniform", 30, 8.0).unwrap().len(), 32);
    assert_eq!(
        sigmas::schedule("ddim_uniform", 5000, 8.0).unwrap().len(),
        1000
    );
    // Beta quantiles collapse onto the same table entries when steps ≫ 1000.
    let beta = sigmas::schedule("beta", 5000, 8.0).unwrap();
    assert!(beta.len() <= 1001 && beta.windows(2).all(|w| w[0] > w[1]));
}

#[test]
fn unknown_scheduler_and_bad_steps() {
    let err = sigmas::schedule("nonexistent", 8, 8.0).unwrap_err();
    for name in sigmas::SCHEDULERS {
        assert!(err.contains(name), "{err}");
    }
    for name in sigmas::SCHEDULERS {
        assert!(sigmas::schedule(name, 0, 8.0).is_err());
        assert!(sigmas::schedule(name, sigmas::MAX_STEPS + 1, 8.0).is_err());
    }
    assert!(sigmas::schedule("beta", sigmas::MAX_STEPS, 8.0).is_ok());
    // uni_pc asks for one step more internally; MAX_STEPS itself is still allowed.
    let dp = sigmas::for_sampler("simple", sigmas::MAX_STEPS, 8.0, "uni_pc").unwrap();
    assert_eq!(dp.len(), sigmas::MAX_STEPS + 1);
    assert!(sigmas::for_sampler("simple", 0, 8.0, "uni_pc").is_err());
}
