//! Image-to-video conditioning against ComfyUI (tests/fixtures/wan_i2v,
//! its README gives the semantics): `image_to_video` and
//! `first_last_to_video` build ComfyUI's `c_concat` from a PNG through the
//! tiny Wan 2.1 VAE; `ti2v_latent`'s latent and mask; the tiny I2V and
//! TI2V DiTs' velocities on the stored probes; and `sample` with
//! `image_cond` / `noise_mask` reproducing KSamplerAdvanced's traces step
//! by step (I2V single pass and split in two, TI2V). Misuse is a clear error.
mod common;

use common::{as_f64, eval, eval_err};

const SETUP: &str = r#"
let vae = load_model("tests/fixtures/wan_vae_tiny/original.safetensors", #{ name: "vae" });
let c = load_tensors("tests/fixtures/wan_i2v/conditioning.safetensors");
let s = load_tensors("tests/fixtures/wan_i2v/sampling.safetensors");
let i2v = load_model("tests/fixtures/wan_i2v/dit_i2v.safetensors", #{ name: "i2v", heads: 2 });
let ti2v = load_model("tests/fixtures/wan_i2v/dit_ti2v.safetensors", #{ name: "ti2v", heads: 2 });
let pos = c["context_positive"]; let neg = c["context_negative"];
let start = load_image("tests/fixtures/wan_i2v/start.png");
let end = load_image("tests/fixtures/wan_i2v/end.png");
"#;

fn value(s: &mut baton::host::Session, what: &str, code: &str) -> f64 {
    let v = as_f64(eval(s, code));
    println!("{what}: {v:.3e}");
    v
}

#[test]
fn image_cond_matches_comfyui() {
    let (_out, mut s) = common::session_after(SETUP);
    let e = value(
        &mut s,
        "i2v image_cond rel L2",
        r#"let r = image_to_video(vae, #{ start_image: start, width: 48, height: 32, length: 9 });
           if max_abs(r.latent) != 0.0 || r.latent.shape != c["i2v.latent"].shape { throw "latent" }
           rel_l2(r.image_cond, c["i2v.c_concat"])"#,
    );
    assert!(e <= 1e-5, "i2v image_cond {e:.3e}");
    let e = value(
        &mut s,
        "flf image_cond rel L2",
        r#"let r = first_last_to_video(vae, #{ start_image: start, end_image: end, width: 48, height: 32, length: 13 });
           if r.latent.shape != c["flf.latent"].shape { throw "latent" }
           rel_l2(r.image_cond, c["flf.c_concat"])"#,
    );
    assert!(e <= 1e-5, "flf image_cond {e:.3e}");
}

#[test]
fn ti2v_latent_and_mask_match_comfyui() {
    let c = common::load_fixture("wan_i2v/conditioning.safetensors");
    let z = baton::models::wan_vae::normalize(&c["ti2v.start_latent_raw"]).unwrap();
    let (latent, mask) = baton::conditioning::ti2v_latent(&z, 2).unwrap();
    let e = common::rel_l2(&latent, &c["ti2v.latent_in"]);
    println!("ti2v latent (sampler space) rel L2: {e:.3e}");
    assert!(e <= 1e-5, "ti2v latent {e:.3e}");
    assert_eq!(common::max_abs_diff(&mask, &c["ti2v.noise_mask"]), 0.0);
    let scales = baton::conditioning::frame_scales(&mask).unwrap();
    assert_eq!(scales, vec![0.0, 1.0]);
}

#[test]
fn dit_probes_match_comfyui() {
    let (_out, mut s) = common::session_after(SETUP);
    for case in ["i2v", "flf"] {
        let e = value(
            &mut s,
            &format!("{case} velocity rel L2"),
            &format!(
                r#"rel_l2(predict(i2v, c["{case}.dit_input"], c["{case}.dit_timestep"], pos), c["{case}.dit_output"])"#
            ),
        );
        assert!(e <= 1e-4, "{case} velocity {e:.3e}");
    }
    let e = value(
        &mut s,
        "i2v velocity with the image_cond option rel L2",
        r#"rel_l2(predict(i2v, c["i2v.x"], 750.0, pos, #{ image_cond: c["i2v.c_concat"] }), c["i2v.dit_output"])"#,
    );
    assert!(e <= 1e-4, "i2v velocity (image_cond) {e:.3e}");
    let e = value(
        &mut s,
        "ti2v velocity (per-token t) rel L2",
        r#"rel_l2(predict(ti2v, c["ti2v.dit_input"], c["ti2v.timestep_per_token"], pos), c["ti2v.dit_output"])"#,
    );
    assert!(e <= 1e-4, "ti2v velocity {e:.3e}");
}

/// Step k of a 4-step pass: the output of a pass ending there with its
/// leftover noise, times (1 - sigma_k), is the sampler's x after step k.
fn trace(s: &mut baton::host::Session, run: &str, model: &str, opts: &str, latent: &str) {
    for k in 1..=4usize {
        let e = value(
            s,
            &format!("{run} step {k} rel L2"),
            &format!(
                r#"let sig = s["{run}.sigmas"].to_list();
                   let o = sample({model}, {latent}, #{{ positive: pos, negative: neg, steps: 4, cfg: 3.5, shift: 5.0,
                       sampler: "euler", scheduler: "simple", end: {k}, leftover_noise: true, {opts} }});
                   rel_l2(o * (1.0 - sig[{k}]), s["{run}.latents_after_step"][{k} - 1])"#
            ),
        );
        assert!(e <= 1e-4, "{run} step {k}: {e:.3e}");
    }
}

#[test]
fn i2v_traces_match_comfyui() {
    let (_out, mut s) = common::session_after(SETUP);
    trace(
        &mut s,
        "i2v",
        "i2v",
        r#"seed: 42, image_cond: c["i2v.c_concat"]"#,
        r#"c["i2v.latent"]"#,
    );
    // Split: pass 1 (steps 0..2, leftover noise), then pass 2 continues it
    // from its output (ComfyUI renormalises and rescales it; baton's latent
    // stays in the sampler's space).
    let e = value(
        &mut s,
        "i2v split pass 2 result rel L2",
        r#"let o = #{ positive: pos, negative: neg, steps: 4, cfg: 3.5, shift: 5.0, image_cond: c["i2v.c_concat"] };
           let a = sample(i2v, c["i2v.latent"], o + #{ seed: 42, end: 2, leftover_noise: true });
           // The stored last step of a leftover-noise pass is x_2 / (1 - sigma_2), the pass's output.
           let p1 = s["i2v_split.pass1.latents_after_step"][1];
           if rel_l2(a, p1) > 1e-4 { throw `pass 1: ${rel_l2(a, p1)}` }
           let b = sample(i2v, a, o + #{ start: 2, add_noise: false });
           rel_l2(b, s["i2v_split.pass2.latents_after_step"][1])"#,
    );
    assert!(e <= 1e-4, "split {e:.3e}");
    // Pass 1 is the single run's first two steps (checked above); pass 2's
    // first step: a pass ending at step 3 with its leftover noise, times
    // 1 - sigma_3, is the sampler's x there.
    let e = value(
        &mut s,
        "i2v split pass 2 step 3 rel L2",
        r#"let sig = s["i2v.sigmas"].to_list();
           let o = #{ positive: pos, negative: neg, steps: 4, cfg: 3.5, shift: 5.0, image_cond: c["i2v.c_concat"] };
           let a = sample(i2v, c["i2v.latent"], o + #{ seed: 42, end: 2, leftover_noise: true });
           let b = sample(i2v, a, o + #{ start: 2, end: 3, add_noise: false, leftover_noise: true });
           rel_l2(b * (1.0 - sig[3]), s["i2v_split.pass2.latents_after_step"][0])"#,
    );
    assert!(e <= 1e-4, "split pass 2 step 3 {e:.3e}");
}

#[test]
fn ti2v_trace_matches_comfyui() {
    let (_out, mut s) = common::session_after(SETUP);
    trace(
        &mut s,
        "ti2v",
        "ti2v",
        r#"seed: 43, noise_mask: c["ti2v.noise_mask"]"#,
        r#"c["ti2v.latent_in"]"#,
    );
}

#[test]
fn misuse_names_the_option() {
    let (_out, mut s) = common::session_after(SETUP);
    let e = eval_err(
        &mut s,
        r#"sample(i2v, c["i2v.latent"], #{ positive: pos, cfg: 1.0, steps: 1 })"#,
    );
    assert!(e.contains("image_cond"), "{e}");
    let e = eval_err(
        &mut s,
        r#"sample(ti2v, c["ti2v.latent_in"], #{ positive: pos, cfg: 1.0, steps: 1, image_cond: c["i2v.c_concat"] })"#,
    );
    assert!(e.contains("image_cond"), "{e}");
    // A text-to-video Wan DiT (16 input channels) refuses it too.
    let e = eval_err(
        &mut s,
        r#"let t2v = load_model("tests/fixtures/wan_tiny/original.safetensors", #{ name: "t2v", heads: 2 });
           sample(t2v, c["i2v.latent"], #{ positive: pos, cfg: 1.0, steps: 1, image_cond: c["i2v.c_concat"] })"#,
    );
    assert!(e.contains("image_cond") && e.contains("'t2v'"), "{e}");
    let e = eval_err(
        &mut s,
        r#"ti2v_latent(vae, #{ start_image: start, width: 96, height: 64, length: 5 })"#,
    );
    assert!(e.contains("Wan 2.2 VAE"), "{e}");
}
