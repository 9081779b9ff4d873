//! Recipes: `param` declarations filled by `--set`, listed by
//! `--help-recipe`; bundled recipes listed by `baton recipes`; and every
//! `baton run` leaves a `run.json` manifest (failed runs too).

use std::path::Path;
use std::process::Command;

fn baton(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running baton");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const RECIPE: &str = r#"//! A tiny recipe for the tests.
let steps = param("steps", 20, "Total sampling steps");
let cfg = param("cfg", 3.5, "Guidance scale");
let prompt = param("prompt", "a red fox", "Positive prompt");
let fast = param("fast", false, "Skip things");
print(`steps=${steps} cfg=${cfg} prompt=${prompt} fast=${fast} ${type_of(steps)} ${type_of(cfg)}`);
let m = load_model("builtin:wan-tiny-high", #{ name: "high" });
let x = empty_latent(#{ width: 32, height: 32, frames: 1 });
x = sample(m, x, #{ positive: zeros([1, 4, 4096]), cfg: 1.0, steps: 2, end: 1, seed: 7 });
"#;

#[test]
fn set_fills_params_and_the_manifest_records_them() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("r.rhai"), RECIPE).unwrap();
    let (ok, out, err) = baton(
        &[
            "run",
            "r.rhai",
            "--set",
            "steps=8",
            "--set",
            "prompt=a cat, sleeping",
            "--set",
            "cfg=1",
        ],
        d.path(),
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("steps=8 cfg=1.0 prompt=a cat, sleeping fast=false i64 f64"),
        "{out}"
    );
    // No --out: the run gets out/<timestamp>-r/ with its manifest.
    let runs: Vec<_> = std::fs::read_dir(d.path().join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let dir_name = runs[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        dir_name.ends_with("-r") && dir_name.len() == "20261128-175000-r".len(),
        "{dir_name}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs[0].join("run.json")).unwrap()).unwrap();
    assert_eq!(m["status"], "ok");
    assert_eq!(m["parameters"]["steps"], 8);
    assert_eq!(m["parameters"]["cfg"], 1.0);
    assert_eq!(m["parameters"]["prompt"], "a cat, sleeping");
    assert_eq!(m["parameters"]["fast"], false);
    assert_eq!(m["seeds"], serde_json::json!([7]));
    assert_eq!(m["samples"][0]["model"], "high");
    assert_eq!(m["samples"][0]["end"], 1);
    let model = &m["models"][0];
    assert_eq!(model["requested"], "builtin:wan-tiny-high");
    assert_eq!(model["sha256"].as_str().unwrap().len(), 64);
    assert!(m["peak_rss"].as_u64().unwrap() > 0);
    assert!(m["peak_device_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        m["script_sha256"].as_str().unwrap(),
        baton::host::manifest::sha256_file(&d.path().join("r.rhai")).unwrap()
    );
}

#[test]
fn bad_and_unknown_sets_fail_naming_the_parameter() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("r.rhai"), RECIPE).unwrap();
    let out = d.path().join("o");
    let o = out.to_str().unwrap();
    let (ok, _, err) = baton(&["run", "r.rhai", "--out", o, "--set", "stepz=8"], d.path());
    assert!(!ok);
    assert!(
        err.contains("declares no parameter 'stepz'") && err.contains("steps, cfg, prompt, fast"),
        "{err}"
    );
    let (ok, _, err) = baton(
        &["run", "r.rhai", "--out", o, "--set", "steps=eight"],
        d.path(),
    );
    assert!(!ok);
    assert!(
        err.contains("r.rhai:2:") && err.contains("param 'steps'"),
        "{err}"
    );
    // The failed run still leaves its manifest, with the error.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(m["status"], "error");
    assert!(
        m["error"].as_str().unwrap().contains("param 'steps'"),
        "{m}"
    );
}

#[test]
fn help_recipe_lists_parameters_without_running() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("r.rhai"), RECIPE).unwrap();
    let (ok, out, err) = baton(&["run", "r.rhai", "--help-recipe"], d.path());
    assert!(ok, "{err}");
    assert!(out.starts_with("A tiny recipe for the tests."), "{out}");
    assert!(
        out.contains("steps   20           Total sampling steps"),
        "{out}"
    );
    assert!(
        out.contains("prompt  \"a red fox\"  Positive prompt"),
        "{out}"
    );
    assert!(!d.path().join("out").exists(), "nothing ran");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, out, _) = baton(&["run", "scripts/wan22_t2v.rhai", "--help-recipe"], repo);
    assert!(
        ok && out.contains("seed") && out.contains("prompt"),
        "{out}"
    );
    let (ok, out, _) = baton(&["recipes"], repo);
    assert!(
        ok && out.contains("wan22") && out.contains("two-expert"),
        "{out}"
    );
}

#[test]
fn bare_import_names_resolve_to_the_bundled_recipes() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("i.rhai"),
        "import \"wan22\" as wan;\nprint(`steps ${wan::defaults(#{}).steps}`);\n",
    )
    .unwrap();
    let (ok, out, err) = baton(&["run", "i.rhai", "--out", "o"], d.path());
    assert!(ok, "{err}");
    assert!(out.contains("steps 20"), "{out}");
}
