//! Running someone else's recipe: the file access policy, the limits, the
//! timeout and Ctrl-C, hostile checkpoints and NaN guards. Each case asserts
//! the specific error and that the session (with a model loaded) still works.

mod common;

use candle_core::{Device, Tensor};
use common::golden::copy_tiny_config;
use common::survivor::{assert_survivor_works, load_survivor};
use common::{as_f64, eval, eval_err, fixture, load_fixture, run};
use std::path::{Path, PathBuf};

fn session(
    out: &Path,
    allow: &[PathBuf],
    limits: baton::host::limits::Limits,
) -> baton::host::Session {
    let mut s = baton::host::Session::new(&baton::host::SessionConfig {
        model_roots: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))],
        out_dir: Some(out.to_path_buf()),
        allow_paths: allow.to_vec(),
        limits,
        ..Default::default()
    });
    load_survivor(&mut s);
    s
}

fn survivor(out: &Path) -> baton::host::Session {
    session(out, &[], Default::default())
}

/// A small safetensors file elsewhere on disk, outside every root.
fn outside_file(dir: &Path) -> PathBuf {
    let p = dir.join("secret.safetensors");
    let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("a", t)]), &p).unwrap();
    p
}

fn assert_refused(e: &str, path_part: &str) {
    assert!(
        e.contains("outside the directories this script may") && e.contains(path_part),
        "expected a refusal naming {path_part}: {e}"
    );
    assert!(
        e.starts_with("test.rhai:1:"),
        "the error should carry the position: {e}"
    );
}

// ---------------------------------------------------------------- file policy

#[test]
fn reads_outside_the_roots_are_refused_for_every_primitive() {
    let out = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = outside_file(elsewhere.path());
    let png = elsewhere.path().join("img.png");
    image::RgbImage::new(4, 4).save(&png).unwrap();
    let mut s = survivor(out.path());
    let cases = [
        format!(r#"load_tensors("{}")"#, secret.display()),
        format!(r#"load_model("{}")"#, secret.display()),
        format!(r#"load_image("{}")"#, png.display()),
        format!(
            r#"load_model("tests/fixtures/umt5_tiny/hf.safetensors", #{{ tokenizer: "{}" }})"#,
            secret.display()
        ),
    ];
    for code in &cases {
        let e = eval_err(&mut s, code);
        assert_refused(&e, &elsewhere.path().file_name().unwrap().to_string_lossy());
        // The roots the script may read are named.
        assert!(e.contains(env!("CARGO_MANIFEST_DIR")), "{e}");
    }
    assert_survivor_works(&mut s);
}

#[test]
fn dotdot_escapes_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let mut s = survivor(out.path());
    // `..` that resolves back inside a root is fine.
    let up = Path::new(env!("CARGO_MANIFEST_DIR"))
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let n = as_f64(eval(
        &mut s,
        &format!(
            r#"load_tensors("../{up}/tests/fixtures/wan_tiny/forward_cases.safetensors").len()"#
        ),
    ));
    assert!(n > 0.0);
    let e = eval_err(
        &mut s,
        r#"load_tensors("../../../../../../../../etc/passwd")"#,
    );
    assert_refused(&e, "/etc/passwd");
    let e = eval_err(
        &mut s,
        r#"save_tensors(#{ a: cases.case0_t }, "../escape.safetensors")"#,
    );
    assert_refused(&e, "escape.safetensors");
    assert!(!out
        .path()
        .parent()
        .unwrap()
        .join("escape.safetensors")
        .exists());
    let e = eval_err(
        &mut s,
        r#"save_tensors(#{ a: cases.case0_t }, "sub/../../escape2.safetensors")"#,
    );
    assert_refused(&e, "escape2.safetensors");
    assert_survivor_works(&mut s);
}

#[test]
fn absolute_outputs_outside_the_out_dir_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("x.safetensors");
    let mut s = survivor(out.path());
    let video = "let v = zeros([1, 3, 1, 8, 8]);";
    for code in [
        format!(
            r#"save_tensors(#{{ a: cases.case0_t }}, "{}")"#,
            target.display()
        ),
        format!(
            r#"{video} save_images(v, "{}")"#,
            elsewhere.path().join("f_%04d.png").display()
        ),
        format!(
            r#"{video} save_video(v, "{}")"#,
            elsewhere.path().join("v.gif").display()
        ),
    ] {
        let e = eval_err(&mut s, &code);
        assert!(
            e.contains("outside the directories this script may write"),
            "{e}"
        );
        assert!(
            e.contains(&out.path().display().to_string()),
            "names the out dir: {e}"
        );
    }
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing written"
    );
    // Inside the out dir the same primitives work.
    run(
        &mut s,
        &format!(
            r#"{video} save_video(v, "ok.gif"); save_tensors(#{{ a: cases.case0_t }}, "t.safetensors");"#
        ),
    );
    assert!(out.path().join("ok.gif").is_file() && out.path().join("t.safetensors").is_file());
    assert_survivor_works(&mut s);
}

#[cfg(unix)]
#[test]
fn symlinks_pointing_out_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = outside_file(elsewhere.path());
    std::os::unix::fs::symlink(&secret, out.path().join("link.safetensors")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), out.path().join("linkdir")).unwrap();
    let mut s = survivor(out.path());
    let e = eval_err(&mut s, r#"load_tensors("link.safetensors")"#);
    assert_refused(&e, "secret.safetensors");
    let e = eval_err(
        &mut s,
        r#"save_tensors(#{ a: cases.case0_t }, "linkdir/planted.safetensors")"#,
    );
    assert_refused(&e, "planted.safetensors");
    assert!(!elsewhere.path().join("planted.safetensors").exists());
    assert_survivor_works(&mut s);
}

#[test]
fn allow_path_widens_reads_and_writes() {
    let out = tempfile::tempdir().unwrap();
    let extra = tempfile::tempdir().unwrap();
    let secret = outside_file(extra.path());
    let mut s = session(
        out.path(),
        &[extra.path().to_path_buf()],
        Default::default(),
    );
    let v = as_f64(eval(
        &mut s,
        &format!(r#"load_tensors("{}").a.to_list()[1]"#, secret.display()),
    ));
    assert_eq!(v, 2.0);
    let target = extra.path().join("written.safetensors");
    run(
        &mut s,
        &format!(
            r#"save_tensors(#{{ a: cases.case0_t }}, "{}");"#,
            target.display()
        ),
    );
    assert!(target.is_file());
    assert_survivor_works(&mut s);
}

#[test]
fn imports_are_confined_to_the_script_tree_and_roots() {
    let root = tempfile::tempdir().unwrap();
    let recipe = root.path().join("recipe");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(recipe.join("lib")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(recipe.join("lib/helper.rhai"), "fn twice(x) { x * 2 }").unwrap();
    std::fs::write(outside.join("evil.rhai"), "fn twice(x) { x * 3 }").unwrap();
    let ok = recipe.join("ok.rhai");
    std::fs::write(&ok, "import \"lib/helper\" as h; h::twice(21)").unwrap();
    let bad = recipe.join("bad.rhai");
    std::fs::write(&bad, "import \"../outside/evil\" as e; e::twice(1)").unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut s = survivor(out.path());
    assert_eq!(s.run_file(&ok).unwrap().as_int().unwrap(), 42);
    let e = s.run_file(&bad).unwrap_err();
    assert!(
        e.contains("import") && e.contains("evil.rhai") && e.contains("outside"),
        "{e}"
    );
    assert!(e.contains("bad.rhai:1:"), "{e}");
    assert_survivor_works(&mut s);
}

// ---------------------------------------------------------------- limits

#[test]
fn limits_stop_runaway_scripts() {
    let out = tempfile::tempdir().unwrap();
    let limits = baton::host::limits::Limits {
        max_operations: 200_000,
        max_string_size: 1 << 16,
        max_array_size: 1000,
        max_map_size: 100,
        ..Default::default()
    };
    let mut s = session(out.path(), &[], limits);
    for (code, want) in [
        ("loop { }", "Too many operations"),
        ("fn f(n) { f(n + 1) } f(0)", "Stack overflow"),
        (
            r#"let s = "x"; loop { s += s; }"#,
            "Length of string too large",
        ),
        (
            "let a = []; loop { a.push(1); }",
            "Size of array/BLOB too large",
        ),
        // (Rhai checks a map's size when it passes through a call, not on `m[k] = v`.)
        (
            "let m = #{}; for i in 0..1000 { let n = #{}; n[`k${i}`] = i; m.mixin(n); }",
            "Size of object map too large",
        ),
    ] {
        let e = eval_err(&mut s, code);
        assert!(e.contains(want), "{code}: expected '{want}', got {e}");
        assert!(e.starts_with("test.rhai:1:"), "{e}");
    }
    assert_survivor_works(&mut s);
}

#[test]
fn the_timeout_stops_an_endless_loop_and_the_session_survives() {
    let out = tempfile::tempdir().unwrap();
    let limits = baton::host::limits::Limits {
        max_operations: 0,
        timeout: Some(std::time::Duration::from_millis(300)),
        ..Default::default()
    };
    let mut s = session(out.path(), &[], limits);
    let t = std::time::Instant::now();
    let e = eval_err(&mut s, "let i = 0; loop { i += 1; }");
    assert!(t.elapsed().as_secs_f64() < 5.0, "took {:?}", t.elapsed());
    assert!(e.contains("timed out after 0.3s"), "{e}");
    assert!(matches!(
        s.last_stop,
        Some(baton::runtime::cancel::Stop::TimedOut(_))
    ));
    assert_survivor_works(&mut s);
    assert!(s.last_stop.is_none(), "a good evaluation clears it");
}

fn endless_script(dir: &Path) -> PathBuf {
    let p = dir.join("endless.rhai");
    std::fs::write(&p, "print(\"started\");\nlet i = 0;\nloop { i += 1; }\n").unwrap();
    p
}

#[test]
fn baton_run_times_out_with_code_124() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["run", "--timeout", "0.5", "--max-operations", "0"])
        .arg(endless_script(dir.path()))
        .arg("--out")
        .arg(dir.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(124), "{stderr}");
    assert!(
        stderr.contains("timed out after 0.5s") && stderr.contains("endless.rhai:3:"),
        "{stderr}"
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_baton_run_with_code_130() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["run", "--max-operations", "0"])
        .arg(endless_script(dir.path()))
        .arg("--out")
        .arg(dir.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the script runs (the handler is installed before it starts).
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "started");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("cancelled (Ctrl-C)") && stderr.contains("endless.rhai:3:"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------- hostile checkpoints

/// A safetensors file from a raw header and data section.
fn raw_safetensors(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend_from_slice(data);
    b
}

/// The corpus of hostile files: (file name, bytes, what load_model must say).
pub fn hostile_corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = std::fs::read(fixture("wan_tiny/original.safetensors")).unwrap();
    let eight = [0u8; 8];
    vec![
        ("empty.safetensors", vec![], "only 0 bytes"),
        ("short.safetensors", vec![1, 2, 3], "only 3 bytes"),
        ("truncated.safetensors", good[..good.len() - 100].to_vec(), "truncated"),
        (
            "header_longer_than_file.safetensors",
            { let mut b = 1000u64.to_le_bytes().to_vec(); b.extend_from_slice(b"{}"); b },
            "header claims 1000 bytes",
        ),
        (
            // 600 MB claimed: refused before any allocation.
            "huge_header.safetensors",
            { let mut b = (600u64 << 20).to_le_bytes().to_vec(); b.extend_from_slice(b"{}"); b },
            "header claims 629145600 bytes",
        ),
        ("not_json.safetensors", raw_safetensors(b"{\"a\": [1, 2", &[]), "header json"),
        ("not_object.safetensors", raw_safetensors(b"[1, 2, 3]", &[]), "not a json object"),
        (
            "bad_dtype.safetensors",
            raw_safetensors(br#"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#, &eight),
            "tensor 'a'",
        ),
        (
            "dtype_length_mismatch.safetensors",
            raw_safetensors(br#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &eight),
            "does not hold [3] x F32",
        ),
        (
            "reversed_offsets.safetensors",
            raw_safetensors(br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, &eight),
            "byte range 8..0",
        ),
        (
            "out_of_range.safetensors",
            raw_safetensors(br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[1000,1008]}}"#, &eight),
            "ends at byte",
        ),
        (
            "offset_overflow.safetensors",
            raw_safetensors(
                br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}}"#,
                &eight,
            ),
            "ends at byte",
        ),
        (
            "overlapping.safetensors",
            raw_safetensors(
                br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                &eight,
            ),
            "overlap or leave gaps",
        ),
        (
            "huge_shape.safetensors",
            raw_safetensors(
                br#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
                &eight,
            ),
            "does not hold",
        ),
        ("no_tensors.safetensors", raw_safetensors(b"{}", &[]), ""),
    ]
}

#[test]
fn hostile_checkpoints_give_clear_errors_and_the_session_survives() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = survivor(out.path());
    for (name, bytes, want) in hostile_corpus() {
        let p = dir.join(name);
        std::fs::write(&p, &bytes).unwrap();
        let e = eval_err(&mut s, &format!(r#"load_model("corpus/{name}")"#));
        assert!(
            e.contains(name) && e.contains(want),
            "{name}: expected '{want}', got {e}"
        );
        assert!(e.starts_with("test.rhai:1:"), "{name}: {e}");
        // load_tensors (candle's reader) must refuse it too, without panicking.
        if name != "no_tensors.safetensors" {
            let e = eval_err(&mut s, &format!(r#"load_tensors("corpus/{name}")"#));
            assert!(
                e.contains("load_tensors") && e.contains(name),
                "{name}: {e}"
            );
        }
        assert_survivor_works(&mut s);
    }
}

fn nan_checkpoint(dir: &Path) -> PathBuf {
    let mut t = load_fixture("wan_tiny/original.safetensors");
    let key = "head.head.bias";
    let b = t
        .get(key)
        .unwrap_or_else(|| panic!("no {key}; keys: {:?}", t.keys().collect::<Vec<_>>()));
    let n = b.elem_count();
    let mut v = vec![0f32; n];
    v[0] = f32::NAN;
    let nan = Tensor::from_vec(v, b.shape(), &Device::Cpu)
        .unwrap()
        .to_dtype(b.dtype())
        .unwrap();
    t.insert(key.to_string(), nan);
    let p = dir.join("nan.safetensors");
    candle_core::safetensors::save(&t, &p).unwrap();
    copy_tiny_config(dir);
    p
}

#[test]
fn nan_weights_are_reported_and_stop_sampling_with_step_and_sigma() {
    let out = tempfile::tempdir().unwrap();
    nan_checkpoint(out.path());
    let mut s = survivor(out.path());
    run(
        &mut s,
        r#"let bad = load_model("nan.safetensors", #{ name: "bad", check_weights: true });"#,
    );
    let e = eval_err(
        &mut s,
        "let x = sample(bad, cases.case0_x, #{ positive: cases.case0_context, steps: 3, cfg: 1 });",
    );
    assert!(
        e.contains("NaN or Inf") && e.contains("step 1 of 3") && e.contains("sigma 1"),
        "{e}"
    );
    // The input latent is untouched and usable.
    assert!(as_f64(eval(&mut s, "max_abs(cases.case0_x)")).is_finite());
    run(&mut s, "delete_model(bad);");
    assert_survivor_works(&mut s);
}

#[test]
fn check_weights_finds_the_nan() {
    let dir = tempfile::tempdir().unwrap();
    let p = nan_checkpoint(dir.path());
    let h = baton::checkpoint::Header::read(&p).unwrap();
    let bad = baton::checkpoint::finite::non_finite_tensors(&h).unwrap();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].0.contains("head") && bad[0].1 == 1, "{bad:?}");
}
