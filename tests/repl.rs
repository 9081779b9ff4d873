//! The REPL keeps its scope across lines, reads multi-line input, and an
//! error does not lose variables, functions or loaded models.

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn scope_survives_errors_and_multiline_input_works() {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("repl")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = "\
let m = load_model(\"tests/fixtures/wan_tiny/original.safetensors\", #{ name: \"kept\" });
let a = 41;
fn twice(x) {
  x * 2
}
let b = [
  1, 2];
this_is_not_defined + 1
print(`answer ${a + 1} ${twice(a)} ${b.len()}`);
print(`models ${loaded_models().len()} ${m.name}`);
vram()
.quit
";
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("this_is_not_defined"),
        "the error is reported: {stderr}"
    );
    assert!(stdout.contains("answer 42 82 2"), "{stdout}");
    assert!(stdout.contains("models 1 kept"), "{stdout}");
    assert!(
        stdout.contains("vram (cpu)") && stdout.contains("kept"),
        "vram() prints as a table: {stdout}"
    );
    assert!(
        home.path().join("baton/history").exists(),
        "history is saved"
    );
}
