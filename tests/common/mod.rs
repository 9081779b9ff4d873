//! Helpers shared by the integration tests: golden comparisons and fixture
//! paths here; predict-and-compare on the tiny DiT in `golden`, the
//! surviving-session set-up in `survivor`, RSS-vs-ledger checks in `rss`.
#![allow(dead_code)]

use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

pub mod comfy;
pub mod golden;
pub mod plan;
pub mod rss;
pub mod survivor;
pub mod tools;
pub mod wan_keys;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn load_fixture(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("loading fixture {rel}: {e}"))
}

/// Relative L2 error ||a - b|| / ||b||, computed in f64.
pub fn rel_l2(actual: &Tensor, expected: &Tensor) -> f64 {
    let a = flat(actual);
    let b = flat(expected);
    assert_eq!(a.len(), b.len(), "element count differs");
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        num += (x - y) * (x - y);
        den += y * y;
    }
    (num / den.max(1e-300)).sqrt()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("tensor to f64 vec")
}

/// Asserts `actual` matches `expected` within a relative L2 error, printing the
/// worst element and the error when it does not.
pub fn assert_close(actual: &Tensor, expected: &Tensor, max_rel_l2: f64, what: &str) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape differs");
    let err = rel_l2(actual, expected);
    // NaN must fail too, hence not `err > max_rel_l2`.
    if err.is_nan() || err > max_rel_l2 {
        let a = flat(actual);
        let b = flat(expected);
        let (i, d) = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .enumerate()
            .fold((0, 0f64), |m, (i, d)| if d > m.1 { (i, d) } else { m });
        panic!(
            "{what}: rel L2 {err:.3e} > {max_rel_l2:.1e}; worst element {i}: {} vs {} (|diff| {d:.3e})",
            a[i], b[i]
        );
    }
}

/// Largest absolute difference.
pub fn max_abs_diff(actual: &Tensor, expected: &Tensor) -> f64 {
    flat(actual)
        .iter()
        .zip(&flat(expected))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A scripting session rooted at the repository (model paths like
/// `tests/fixtures/wan_tiny/original.safetensors` resolve), writing outputs to `out`.
pub fn session_with(budget: Option<u64>, out: &std::path::Path) -> baton::host::Session {
    baton::host::Session::new(&baton::host::SessionConfig {
        budget,
        model_roots: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))],
        out_dir: Some(out.to_path_buf()),
        ..Default::default()
    })
}

/// Evaluates code that must succeed, panicking with the script error otherwise.
pub fn eval(s: &mut baton::host::Session, code: &str) -> rhai::Dynamic {
    s.eval(code, "test.rhai")
        .unwrap_or_else(|e| panic!("script failed: {e}\n--- code ---\n{code}"))
}

/// Evaluates code that must fail, returning the formatted error.
pub fn eval_err(s: &mut baton::host::Session, code: &str) -> String {
    match s.eval(code, "test.rhai") {
        Ok(v) => panic!("script should have failed, returned {v}\n--- code ---\n{code}"),
        Err(e) => e,
    }
}

pub fn as_f64(v: rhai::Dynamic) -> f64 {
    v.as_float()
        .or_else(|_| v.as_int().map(|i| i as f64))
        .unwrap_or_else(|_| panic!("expected a number, got {}", v.type_name()))
}

/// Evaluates code that must succeed, discarding its value.
pub fn run(s: &mut baton::host::Session, code: &str) {
    let _ = eval(s, code);
}

/// What one `baton run` printed.
pub struct BatonRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl BatonRun {
    /// Panics with both streams unless the run succeeded.
    pub fn assert_ok(&self) {
        assert!(
            self.ok,
            "baton run failed:\n{}\n{}",
            self.stdout, self.stderr
        );
    }
}

/// Runs `baton run SCRIPT [--out OUT]` from the repository root, with its
/// own built-in model cache when `cache` is given.
pub fn baton_run(
    script: &std::path::Path,
    out: Option<&std::path::Path>,
    cache: Option<&std::path::Path>,
) -> BatonRun {
    let mut args: Vec<&std::ffi::OsStr> = vec!["run".as_ref(), script.as_ref()];
    if let Some(o) = out {
        args.extend(["--out".as_ref(), o.as_os_str()]);
    }
    baton(&args, cache)
}

/// `baton run SCRIPT --out OUT --trace TRACE` from the repository root.
pub fn baton_run_traced(
    script: &str,
    out: &std::path::Path,
    trace: &std::path::Path,
    cache: Option<&std::path::Path>,
) -> BatonRun {
    baton(
        &[
            "run".as_ref(),
            script.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
            "--trace".as_ref(),
            trace.as_os_str(),
        ],
        cache,
    )
}

/// Runs `baton ARGS...` from the repository root, with its own built-in
/// model cache when `cache` is given.
pub fn baton(args: &[&std::ffi::OsStr], cache: Option<&std::path::Path>) -> BatonRun {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_baton"));
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    if let Some(c) = cache {
        cmd.env("BATON_CACHE_DIR", c);
    }
    let o = cmd.output().expect("running baton");
    BatonRun {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A session (writing into a fresh temp dir, returned so it lives as long as
/// the session) that has already run `setup`.
pub fn session_after(setup: &str) -> (tempfile::TempDir, baton::host::Session) {
    let out = tempfile::tempdir().unwrap();
    let mut s = session_with(None, out.path());
    run(&mut s, setup);
    (out, s)
}

/// ComfyUI-style fp8_scaled quantisation of one weight: a per-tensor scale
/// mapping max |w| to F8_E4M3's largest finite value (448). Returns (the
/// F8_E4M3 tensor, its scale, the dequantised `fp8 · scale` in f32: the
/// reference a loader must reproduce).
pub fn quantise_fp8(w: &Tensor) -> (Tensor, f32, Tensor) {
    let amax = w
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = amax / 448.0;
    let q = (w / scale as f64).unwrap().to_dtype(DType::F8E4M3).unwrap();
    let deq = q
        .to_dtype(DType::F32)
        .unwrap()
        .broadcast_mul(&Tensor::new(scale, w.device()).unwrap())
        .unwrap();
    (q, scale, deq)
}
