//! Every sampler through `sample` on a real (tiny) Wan DiT: the runtime's
//! denoiser, not the analytic one. The ComfyUI traces (tests/samplers_all.rs)
//! check the arithmetic; this checks that each name runs end to end in the
//! product, reproducibly, with the noise source the pass picks for it.
mod common;

use common::survivor::survivor;
use common::{as_f64, eval, eval_err, run};

#[test]
fn every_sampler_runs_through_sample() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = survivor(dir.path());
    for name in baton::sampling::sampler_names() {
        let opts = format!(
            "#{{ positive: cases.case0_context, negative: cases.case0_context, cfg: 2.0, \
             steps: 6, shift: 5.0, seed: 7, sampler: \"{name}\" }}"
        );
        run(
            &mut s,
            &format!("let a = sample(keep, cases.case0_x, {opts});"),
        );
        run(
            &mut s,
            &format!("let b = sample(keep, cases.case0_x, {opts});"),
        );
        // Same seed, same result (the Brownian tree and the generators are seeded).
        let d = as_f64(eval(&mut s, "rel_l2(a, b)"));
        assert_eq!(d, 0.0, "{name}: two runs differ by {d}");
        let finite = as_f64(eval(&mut s, "rel_l2(a, cases.case0_x)"));
        assert!(finite.is_finite(), "{name}: {finite}");
    }
}

#[test]
fn gpu_names_equal_their_base_and_cfg_pp_needs_a_negative() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = survivor(dir.path());
    for (gpu, base) in [
        ("dpmpp_sde_gpu", "dpmpp_sde"),
        ("dpmpp_2m_sde_gpu", "dpmpp_2m_sde"),
        ("dpmpp_2m_sde_heun_gpu", "dpmpp_2m_sde_heun"),
        ("dpmpp_3m_sde_gpu", "dpmpp_3m_sde"),
    ] {
        let d = as_f64(eval(
            &mut s,
            &format!(
                "let o = #{{ positive: cases.case0_context, cfg: 1.0, steps: 4, seed: 3 }};\
                 let o2 = o; o.sampler = \"{gpu}\"; o2.sampler = \"{base}\";\
                 rel_l2(sample(keep, cases.case0_x, o), sample(keep, cases.case0_x, o2))"
            ),
        ));
        assert_eq!(d, 0.0, "{gpu} vs {base}");
    }
    // cfg_pp reads the uncond prediction even at cfg 1, so it needs a negative.
    let e = eval_err(
        &mut s,
        "sample(keep, cases.case0_x, #{ positive: cases.case0_context, cfg: 1.0, steps: 2, sampler: \"euler_cfg_pp\" })",
    );
    assert!(e.contains("negative"), "{e}");
}
