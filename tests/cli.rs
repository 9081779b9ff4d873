//! The command line: `inspect` summarises headers, `run` honours --vram and
//! --out, and failures exit non-zero with a message naming the file.

use std::process::Command;

fn baton(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running baton");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_reports_arch_layout_dtype_and_size() {
    for (file, layout) in [("original", "original"), ("diffusers", "diffusers")] {
        let path = format!("tests/fixtures/wan_tiny/{file}.safetensors");
        let (ok, out, err) = baton(&["inspect", &path]);
        assert!(ok, "{err}");
        assert!(out.contains("arch:       wan-dit"), "{out}");
        assert!(out.contains(&format!("layout:     {layout}")), "{out}");
        assert!(
            out.contains("dim 48 | heads 2 (head_dim 24) | layers 2"),
            "{out}"
        );
        assert!(out.contains("90.4K params") && out.contains("F32"), "{out}");
    }
}

/// `inspect` on a community GGUF: bytes per quant type, the config from
/// the shapes, and what would stay resident under `--vram` (blocks counted
/// at their quantized size).
#[test]
fn inspect_reports_gguf_types_and_residency() {
    let path = "tests/fixtures/gguf/wan_tiny_Q4_K_M.gguf";
    let (ok, out, err) = baton(&["inspect", path]);
    assert!(ok, "{err}");
    for want in [
        "gguf:       F16 6 tensors 1.2 MiB, Q4_K 14 tensors 0.6 MiB, Q6_K 6 tensors 0.4 MiB, F32 43 tensors 0.1 MiB",
        "arch:       wan-dit",
        "dim 256 | heads 2 (head_dim 128) | layers 2 | ffn 512 | text_dim 64",
        "resident:   2.3 MiB in f32, GGUF matrices kept as stored (all 2 blocks)",
        "metadata:   general.architecture = wan",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    let (ok, out, err) = baton(&["inspect", path, "--vram", "2MiB"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("0/2 blocks resident") && out.contains("1.0 MiB streamed per forward"),
        "{out}"
    );
    let (ok, out, err) = baton(&["inspect", "tests/fixtures/gguf/umt5_tiny_Q8_0.gguf"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("gguf:       Q8_0 15 tensors") && out.contains("arch:       umt5 2x64"),
        "{out}"
    );
}

#[test]
fn inspect_of_a_truncated_file_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.safetensors");
    let bytes = std::fs::read("tests/fixtures/wan_tiny/original.safetensors").unwrap();
    std::fs::write(&p, &bytes[..1000]).unwrap();
    let (ok, _, err) = baton(&["inspect", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("cut.safetensors"), "{err}");
}

#[test]
fn run_honours_vram_and_out() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("s.rhai");
    std::fs::write(
        &script,
        r#"
        let v = vram();
        print(`budget ${v.budget}`);
        save_tensors(#{ z: zeros([2, 3]) }, "z.safetensors");
        "#,
    )
    .unwrap();
    let out_dir = dir.path().join("outputs");
    let (ok, out, err) = baton(&[
        "run",
        script.to_str().unwrap(),
        "--vram",
        "3GiB",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("budget {}", 3u64 << 30)), "{out}");
    assert!(out_dir.join("z.safetensors").exists());
}

#[test]
fn inspect_recognises_the_text_encoder_and_the_vae() {
    let (ok, out, err) = baton(&["inspect", "tests/fixtures/umt5_tiny/hf.safetensors"]);
    assert!(ok, "{err}");
    assert!(out.contains("arch:       umt5 2x32"), "{out}");
    assert!(out.contains("heads 4 (d_kv 8) | layers 2"), "{out}");
    let (ok, out, err) = baton(&[
        "inspect",
        "tests/fixtures/wan_vae_tiny/original.safetensors",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("arch:       wan-vae 2.1 width 4"), "{out}");
    assert!(out.contains("z_dim 16"), "{out}");
}

/// The bundled stdlib needs no file access: it imports under any --models,
/// and a file a recipe brings along cannot shadow it.
#[test]
fn bundled_stdlib_imports_under_any_model_root() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("stdlib")).unwrap();
    std::fs::write(
        dir.path().join("stdlib/wan22.rhai"),
        "fn defaults(o) { throw \"shadowed\"; }\n",
    )
    .unwrap();
    let script = dir.path().join("r.rhai");
    std::fs::write(
        &script,
        "import \"stdlib/wan22\" as wan;\nprint(`split ${wan::defaults(#{}).split}`);\n",
    )
    .unwrap();
    let models = tempfile::tempdir().unwrap();
    let (ok, out, err) = baton(&[
        "run",
        script.to_str().unwrap(),
        "--models",
        models.path().to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("split 10"), "{out}");
}

/// `--device` picks where models compute: `cpu` always works and says so in
/// `vram()`; a malformed name and, in a build without the cuda feature, a
/// card both fail before the script runs, with a message that says what to do.
#[test]
fn device_flag_selects_or_explains() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("s.rhai");
    std::fs::write(
        &script,
        "let v = vram(); print(`device ${v.device} pinned ${v.pinned} driver ${\"driver_total\" in v}`);",
    )
    .unwrap();
    let s = script.to_str().unwrap();
    let out_dir = dir.path().join("o");
    let o = out_dir.to_str().unwrap();
    let (ok, out, err) = baton(&["run", s, "--device", "cpu", "--out", o]);
    assert!(ok, "{err}");
    assert!(out.contains("device cpu pinned 0 driver false"), "{out}");
    let (ok, _, err) = baton(&["run", s, "--device", "tpu", "--out", o]);
    assert!(
        !ok && err.contains("expected auto, cpu, cuda or cuda:N"),
        "{err}"
    );
    if !cfg!(feature = "cuda") {
        let (ok, _, err) = baton(&["run", s, "--device", "cuda:0", "--out", o]);
        assert!(!ok && err.contains("--features cuda"), "{err}");
        // auto falls back to the CPU without a word of error.
        let (ok, out, err) = baton(&["run", s, "--out", o]);
        assert!(ok && out.contains("device cpu"), "{err}");
    }
}

/// Logs piped into a file or another program carry no ANSI colour codes
/// (tracing colours them only when stderr is a terminal).
#[test]
fn piped_logs_carry_no_ansi_codes() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("log.rhai");
    std::fs::write(
        &script,
        r#"
        let m = load_model("tests/fixtures/wan_tiny/original.safetensors", #{ name: "tiny" });
        print(m.name);
        delete_model(m);
        "#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, stderr) = baton(&[
        "run",
        script.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    // The INFO lines are there, as plain text.
    assert!(stderr.contains("INFO loaded tiny"), "{stderr}");
    assert!(stderr.contains("INFO deleted tiny"), "{stderr}");
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(
            !text.contains('\x1b'),
            "{name} holds an escape code: {text:?}"
        );
    }
}

#[test]
fn bench_device_refuses_a_vae_latent_of_two_numbers() {
    // Checked before anything is written or loaded.
    let (ok, _, err) = baton(&["bench", "device", "--device", "cpu", "--vae-latent", "2,8"]);
    assert!(!ok);
    assert!(
        err.contains("--vae-latent takes three numbers") && err.contains("[2, 8]"),
        "{err}"
    );
}
