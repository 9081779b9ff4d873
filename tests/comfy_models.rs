//! `--comfy DIR` / `$COMFYUI_PATH`: model files are found by bare name in
//! ComfyUI's folders and those of its `extra_model_paths.yaml`, `models()`
//! lists them with sizes and detected architecture, and the folders widen
//! the read policy and nothing else.

use std::path::Path;
use std::process::Command;

fn fixture(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

#[test]
fn comfy_folders_are_searched_and_listed() {
    let d = tempfile::tempdir().unwrap();
    let comfy = d.path().join("ComfyUI");
    std::fs::create_dir_all(comfy.join("models/diffusion_models")).unwrap();
    std::fs::create_dir_all(comfy.join("models/vae")).unwrap();
    std::fs::copy(
        fixture("wan_tiny/original.safetensors"),
        comfy.join("models/diffusion_models/wan_tiny_high.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        fixture("wan_vae_tiny/original.safetensors"),
        comfy.join("models/vae/tiny_vae.safetensors"),
    )
    .unwrap();
    // A second drive named in extra_model_paths.yaml (relative base_path).
    let extra = d.path().join("drive/wan");
    std::fs::create_dir_all(extra.join("te")).unwrap();
    std::fs::copy(
        fixture("umt5_tiny/hf.safetensors"),
        extra.join("te/umt5_tiny.safetensors"),
    )
    .unwrap();
    std::fs::write(
        comfy.join("extra_model_paths.yaml"),
        "# my drives\nwan_drive:\n    base_path: ../drive/wan\n    text_encoders: |\n        te\n        missing_dir\n",
    )
    .unwrap();
    std::fs::write(d.path().join("secret.txt"), "x").unwrap();
    std::fs::create_dir_all(d.path().join("scripts")).unwrap();
    let script = d.path().join("scripts/s.rhai");
    std::fs::write(
        &script,
        r#"
let m = load_model("wan_tiny_high.safetensors", #{ heads: 2 });
let te = load_model("umt5_tiny.safetensors");
let v = load_model("tiny_vae.safetensors");
print(`loaded ${m.arch} | ${te.name} | ${v.name}`);
print(models());
let files = models().files;
print(`listed ${files.len()}`);
try { load_tensors("../secret.txt"); } catch (e) { print(`refused: ${e}`); }
"#,
    )
    .unwrap();
    let models = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["run", script.to_str().unwrap(), "--out"])
        .arg(d.path().join("out"))
        .args(["--models", models.path().to_str().unwrap()])
        .env("COMFYUI_PATH", &comfy)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("loaded wan-dit"), "{stdout}");
    assert!(stdout.contains("listed 3"), "{stdout}");
    for (file, folder, arch) in [
        ("wan_tiny_high.safetensors", "diffusion_models", "wan-dit"),
        ("tiny_vae.safetensors", "vae", "wan-vae"),
        ("umt5_tiny.safetensors", "te", "umt5 text encoder"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("{file} not listed:\n{stdout}"));
        assert!(
            line.contains(folder) && line.contains(arch) && line.contains("MiB"),
            "{line}"
        );
    }
    assert!(
        stdout.contains("refused:") && stdout.contains("outside"),
        "{stdout}"
    );
}

#[test]
fn a_missing_comfy_dir_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["run", "x.rhai", "--comfy", "/nonexistent/ComfyUI"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/ComfyUI is not a directory"),
        "{err}"
    );
}
