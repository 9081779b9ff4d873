//! The Wan 2.2 VAE (TI2V-5B's) against diffusers and ComfyUI on
//! tests/fixtures/wan_i2v (tiny widths, the real structure): decode of one
//! and of three latent frames, encode of five frames, from the original /
//! ComfyUI key layout and from diffusers' (the same tensors renamed).
mod common;

use baton::models::wan_vae::layout22::{diffusers_nrb, to_original22};
use baton::models::wan_vae::{Wan22Vae, Wan22VaeConfig};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};

fn build(tensors: HashMap<String, Tensor>) -> Wan22Vae {
    let shapes: BTreeMap<String, Vec<usize>> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    let cfg = Wan22VaeConfig::infer(&shapes).unwrap();
    assert_eq!((cfg.enc_dim, cfg.dec_dim, cfg.z_dim), (3, 4, 48));
    assert_eq!(cfg.temporal_downsample, vec![false, true, true]);
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    Wan22Vae::new(&cfg, vb).unwrap()
}

fn original() -> Wan22Vae {
    build(common::load_fixture("wan_i2v/vae22_original.safetensors"))
}

fn check(vae: &Wan22Vae, layout: &str) {
    let c = common::load_fixture("wan_i2v/vae22_cases.safetensors");
    for case in ["decode_t1_h2_w3", "decode_t3_h2_w2"] {
        let got = vae.decode(&c[&format!("{case}.latent")], false).unwrap();
        for (want, tol) in [("video_unclamped", 1e-4), ("video_unclamped_comfy", 1e-4)] {
            let e = common::max_abs_diff(&got, &c[&format!("{case}.{want}")]);
            println!("{layout} {case} vs {want}: max abs {e:.2e}");
            assert!(e <= tol, "{layout} {case} {want}: {e:.3e}");
        }
    }
    let px = &c["encode_t5_h32_w32.pixels"];
    let video = px
        .permute((3, 0, 1, 2))
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .affine(2.0, -1.0)
        .unwrap();
    let mu = vae.encode(&video).unwrap();
    for want in ["latent_mean", "latent_mean_comfy"] {
        let w = &c[&format!("encode_t5_h32_w32.{want}")];
        let e = common::max_abs_diff(&mu, w);
        let r = common::rel_l2(&mu, w);
        println!("{layout} encode vs {want}: max abs {e:.2e}, rel L2 {r:.2e}");
        assert!(e <= 1e-4, "{layout} encode {want}: {e:.3e}");
        assert!(r <= 1e-5, "{layout} encode {want}: rel L2 {r:.3e}");
    }
}

#[test]
fn original_layout_matches_diffusers_and_comfyui() {
    check(&original(), "original");
}

#[test]
fn diffusers_layout_loads_the_same_model() {
    let raw = common::load_fixture("wan_i2v/vae22_diffusers.safetensors");
    let nrb = diffusers_nrb(raw.keys().map(String::as_str));
    assert_eq!(nrb, 2);
    let map: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("wan_i2v/vae22_key_mapping.json")).unwrap(),
    )
    .unwrap();
    let mut renamed = HashMap::new();
    for (k, t) in raw {
        let o = to_original22(&k, nrb).unwrap_or_else(|| panic!("no original name for {k}"));
        assert_eq!(map["diffusers_to_original"][&k], o, "{k}");
        renamed.insert(o, t);
    }
    check(&build(renamed), "diffusers");
}

#[test]
fn decode_memory_is_flat_in_frames() {
    // Each chunk comes out as it is decoded: 1 frame, then 4 per latent frame.
    let vae = original();
    let z = Tensor::zeros((1, 48, 5, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let mut sizes = Vec::new();
    vae.decode_each(&z, true, &mut |_, t| {
        sizes.push(t.dim(2)?);
        Ok(())
    })
    .unwrap();
    assert_eq!(sizes, vec![1, 4, 4, 4, 4]);
}

#[test]
fn load_model_decode_encode_and_ti2v_latent() {
    let (_out, mut s) = common::session_after(
        r#"let c = load_tensors("tests/fixtures/wan_i2v/vae22_cases.safetensors");
           let k = load_tensors("tests/fixtures/wan_i2v/conditioning.safetensors");
           let vae = load_model("tests/fixtures/wan_i2v/vae22_original.safetensors", #{ name: "vae22" });
           let vd = load_model("tests/fixtures/wan_i2v/vae22_diffusers.safetensors", #{ name: "vae22d" });"#,
    );
    for m in ["vae", "vd"] {
        let arch = common::eval(&mut s, &format!("{m}.arch"))
            .into_string()
            .unwrap();
        assert_eq!(arch, "wan-vae 2.2 width 3", "{m}");
        let e = common::as_f64(common::eval(
            &mut s,
            &format!(
                r#"max_abs(decode({m}, c["decode_t3_h2_w2.latent"], #{{ raw: true, clamp: false }}) - c["decode_t3_h2_w2.video_unclamped_comfy"])"#
            ),
        ));
        println!("{m}: decode through the runtime, max abs {e:.2e}");
        assert!(e <= 1e-4, "{m} decode {e:.3e}");
    }
    // Wan22ImageToVideoLatent: the start image encoded as the clean first
    // frame, in the sampler's space, with its noise mask.
    let e = common::as_f64(common::eval(
        &mut s,
        r#"let r = ti2v_latent(vae, #{ start_image: load_image("tests/fixtures/wan_i2v/ti2v_start.png"), width: 96, height: 64, length: 5 });
           if max_abs(r.noise_mask - k["ti2v.noise_mask"]) != 0.0 { throw "mask" }
           rel_l2(r.latent, k["ti2v.latent_in"])"#,
    ));
    println!("ti2v_latent (encoded by baton's 2.2 VAE) vs ComfyUI latent_in: rel L2 {e:.2e}");
    assert!(e <= 1e-5, "ti2v latent {e:.3e}");
    let shape = common::eval(
        &mut s,
        r#"empty_latent(#{ channels: 48, width: 96, height: 64, frames: 5 }).shape"#,
    );
    assert_eq!(shape.to_string(), "[1, 48, 2, 4, 6]");
}

#[test]
fn inspect_names_the_wan22_vae_in_both_layouts() {
    for (file, layout) in [
        ("vae22_original", "original"),
        ("vae22_diffusers", "diffusers"),
    ] {
        let path = format!("tests/fixtures/wan_i2v/{file}.safetensors");
        let run = common::baton(&["inspect".as_ref(), path.as_ref()], None);
        run.assert_ok();
        let out = &run.stdout;
        assert!(
            out.contains("arch:       wan-vae 2.2 width 3"),
            "{file}: {out}"
        );
        assert!(
            out.contains(&format!("layout:     {layout}")),
            "{file}: {out}"
        );
        assert!(out.contains("decoder dim 4 | z_dim 48"), "{file}: {out}");
    }
}
