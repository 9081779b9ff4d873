//! The published Wan configs are read back from full-size checkpoints
//! without their weights. Each file here has the real key names, shapes,
//! dtypes and byte offsets of a 14B or 5B model, but its data section is a
//! hole (a sparse file), so the real header parser, layout detection and
//! config inference run on a 28.6 GB "file" that takes no disk space.
//! `baton inspect` then plans it under a 24 GiB budget.
mod common;

use baton::checkpoint::{detect, Header};
use baton::models::wan::WanConfig;
use common::wan_keys::wan_keys;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

fn bytes_per(dtype: &str) -> usize {
    match dtype {
        "F32" => 4,
        "BF16" | "F16" => 2,
        _ => 1,
    }
}

/// Writes a safetensors header for `keys` followed by a hole as long as the
/// data would be. Returns the file's length.
fn write_sparse(path: &Path, keys: &[(String, &str, Vec<usize>)]) -> u64 {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape) in keys {
        let n = shape.iter().product::<usize>() * bytes_per(dtype);
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n] }),
        );
        offset += n;
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
    file.write_all(&json).unwrap();
    let len = (8 + json.len() + offset) as u64;
    file.set_len(len).unwrap();
    len
}

/// ComfyUI's fp8_scaled repackaging of `keys`: the prefix, every block
/// linear weight in F8_E4M3 with an f32 `scale_weight`, and the marker.
fn comfy_fp8_scaled(
    keys: &[(String, &'static str, Vec<usize>)],
) -> Vec<(String, &'static str, Vec<usize>)> {
    let p = "model.diffusion_model.";
    let mut out = vec![("scaled_fp8".to_string(), "F8_E4M3", vec![0])];
    for (k, _, s) in keys {
        if k.starts_with("blocks.") && k.ends_with(".weight") && s.len() == 2 {
            out.push((format!("{p}{k}"), "F8_E4M3", s.clone()));
            let stem = k.strip_suffix(".weight").unwrap();
            out.push((format!("{p}{stem}.scale_weight"), "F32", vec![1]));
        } else {
            out.push((format!("{p}{k}"), "BF16", s.clone()));
        }
    }
    out
}

fn inspect(path: &Path, vram: &str) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["inspect", path.to_str().unwrap(), "--vram", vram])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn published_configs_are_inferred_from_full_size_headers() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "t2v_high_noise_14B_bf16",
            WanConfig::wan22_t2v_a14b(),
            false,
            "t2v-A14B",
        ),
        (
            "i2v_high_noise_14B_bf16",
            WanConfig::wan22_i2v_a14b(),
            false,
            "i2v-A14B",
        ),
        (
            "wan2.1_i2v_480p_14B_bf16",
            WanConfig::wan22_i2v_a14b(),
            true,
            "wan2.1-i2v-14B",
        ),
        ("ti2v_5B_bf16", WanConfig::wan22_ti2v_5b(), false, "ti2v-5B"),
    ];
    let mut params = BTreeMap::new();
    for (name, cfg, clip, variant) in cases {
        let path = dir.path().join(format!("{name}.safetensors"));
        let len = write_sparse(&path, &wan_keys(&cfg, clip));
        let header = Header::read(&path).unwrap();
        assert_eq!(header.file_len, len);
        let d = detect(&header, None).unwrap();
        assert_eq!(d.cfg, cfg, "{name}");
        assert_eq!(d.variant, variant, "{name}");
        assert_eq!(d.clip_image, clip, "{name}");
        assert_eq!(d.dtype, "bf16");
        params.insert(name, d.param_count());
    }
    // The published sizes: each A14B expert is ~14.3B parameters (28.6 GB in
    // bf16), the 5B is ~5.0B.
    let p14 = params["t2v_high_noise_14B_bf16"];
    assert!((14_200_000_000..14_400_000_000).contains(&p14), "{p14}");
    let p5 = params["ti2v_5B_bf16"];
    assert!((4_900_000_000..5_100_000_000).contains(&p5), "{p5}");
    // I2V differs only in its patch embedding: 20 more input channels.
    assert_eq!(params["i2v_high_noise_14B_bf16"] - p14, 5120 * 20 * 4);

    // Published values, spelled out (not just compared with our own presets).
    let c = WanConfig::wan22_t2v_a14b();
    assert_eq!(
        (
            c.dim,
            c.num_heads,
            c.num_layers,
            c.ffn_dim,
            c.text_dim,
            c.freq_dim,
            c.patch_size
        ),
        (5120, 40, 40, 13824, 4096, 256, [1, 2, 2])
    );
    assert_eq!((c.in_dim, c.out_dim), (16, 16));
    assert_eq!(WanConfig::wan22_i2v_a14b().in_dim, 36);
    let c = WanConfig::wan22_ti2v_5b();
    assert_eq!(
        (
            c.dim,
            c.num_heads,
            c.num_layers,
            c.ffn_dim,
            c.in_dim,
            c.out_dim
        ),
        (3072, 24, 30, 14336, 48, 48)
    );
}

#[test]
fn comfy_fp8_scaled_14b_header_and_inspect_under_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WanConfig::wan22_t2v_a14b();
    let path = dir
        .path()
        .join("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors");
    let len = write_sparse(&path, &comfy_fp8_scaled(&wan_keys(&cfg, false)));
    // Comfy-Org's file is 14.3 GB.
    assert!((14_000_000_000..14_700_000_000).contains(&len), "{len}");
    let d = detect(&Header::read(&path).unwrap(), None).unwrap();
    assert_eq!(d.cfg, cfg);
    assert_eq!(d.variant, "t2v-A14B");
    assert_eq!(d.dtype, "fp8_e4m3");

    let out = inspect(&path, "24GiB");
    assert!(out.contains("arch:       wan-dit t2v-A14B"), "{out}");
    assert!(
        out.contains("dim 5120 | heads 40 (head_dim 128) | layers 40 | ffn 13824"),
        "{out}"
    );
    assert!(out.contains("F8_E4M3") && out.contains("BF16"), "{out}");
    // bf16 resident would be 28.6 GB: under 24 GiB the weights stay fp8
    // (dequantised per layer at forward time), and then all 40 blocks fit.
    assert!(out.contains("all 40 blocks, 14306 MiB in f8e4m3"), "{out}");
    // Under 16 GiB even fp8 streams some blocks.
    let out = inspect(&path, "12GiB");
    assert!(out.contains("blocks resident"), "{out}");
    assert!(out.contains("streamed per forward, in f8e4m3"), "{out}");
    // With room for bf16 the load dequantises once, for the faster forward.
    let out = inspect(&path, "64GiB");
    assert!(
        out.contains("all 40 blocks") && out.contains("in bf16"),
        "{out}"
    );
}
