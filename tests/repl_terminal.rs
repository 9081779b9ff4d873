//! The REPL driven through a real terminal (tmux): Tab completion of a
//! primitive and of an option key, a multi-line bracketed paste, `.help`,
//! an error with a caret under its column, Ctrl-C during a long `sample`,
//! and `.models` showing the model still loaded afterwards.
//!
//! Skipped (with a message) where tmux is not installed; under CI (the `CI`
//! environment variable set, as `.ci/run` sets it) a missing tmux fails it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("running tmux")
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "repl"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success());
    }

    /// Types `text` literally (no key-name lookup). tmux reads an argument
    /// ending in ';' as a command separator unless it is escaped.
    fn type_text(&self, text: &str) {
        let arg = match text.strip_suffix(';') {
            Some(head) => format!("{head}\\;"),
            None => text.to_string(),
        };
        assert!(self
            .cmd(&["send-keys", "-t", "repl", "-l", &arg])
            .status
            .success());
    }

    fn screen(&self) -> String {
        let o = self.cmd(&["capture-pane", "-p", "-J", "-t", "repl", "-S", "-500"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Waits until the screen holds `text` `count` times.
    fn wait_for_n(&self, text: &str, count: usize) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.matches(text).count() >= count {
                return s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("timed out waiting for {text:?} (x{count}); screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for(&self, text: &str) -> String {
        self.wait_for_n(text, 1)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn repl_in_a_terminal() {
    if !common::tools::available("tmux", &["-V"]) {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let t = Tmux {
        socket: format!("baton-test-{}", std::process::id()),
    };
    let launch = format!(
        "cd {repo} && env HOME={h} XDG_DATA_HOME={h} NO_COLOR=1 TERM=xterm {bin} repl --models tests/fixtures; sleep 30",
        h = home.path().display(),
        bin = env!("CARGO_BIN_EXE_baton"),
    );
    let o = t.cmd(&[
        "new-session",
        "-d",
        "-s",
        "repl",
        "-x",
        "160",
        "-y",
        "60",
        &launch,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    t.wait_for("baton>");

    // Completion of a primitive name, then of a file under the model root.
    t.type_text("let m = load_mo");
    t.keys(&["Tab"]);
    t.wait_for("let m = load_model");
    t.type_text("(\"wan_tiny/original.");
    t.keys(&["Tab"]);
    t.wait_for("load_model(\"wan_tiny/original.safetensors");
    t.type_text("\", #{ name: \"kept\" });");
    t.keys(&["Enter"]);
    t.wait_for_n("baton>", 2);

    // A multi-line script pasted in one go (bracketed paste), then Enter.
    let paste = home.path().join("paste.rhai");
    std::fs::write(
        &paste,
        "fn twice(v) {\n    v * 2\n}\nlet pos = zeros([1, 8, 32]);\nprint(`pasted ${twice(21)}`);",
    )
    .unwrap();
    assert!(t
        .cmd(&["load-buffer", "-b", "p", paste.to_str().unwrap()])
        .status
        .success());
    assert!(t
        .cmd(&["paste-buffer", "-p", "-d", "-b", "p", "-t", "repl"])
        .status
        .success());
    t.keys(&["Enter"]);
    t.wait_for("pasted 42");

    // .help shows the signature, options and example from the doc table.
    t.type_text(".help empty_latent");
    t.keys(&["Enter"]);
    t.wait_for("empty_latent(opts) -> Tensor");
    t.wait_for("video frames, 4k+1");

    // A syntax error shows the line and a caret under the column.
    t.type_text("let y = 1 +* 2;");
    t.keys(&["Enter"]);
    let s = t.wait_for("syntax error");
    assert!(s.contains("   1 | let y = 1 +* 2;"), "{s}");
    let caret = s
        .lines()
        .find(|l| l.trim_start().starts_with("| ") && l.trim_end().ends_with('^'))
        .unwrap_or_else(|| panic!("no caret line:\n{s}"));
    let code_line = s.lines().find(|l| l.contains("   1 | let y")).unwrap();
    let col = caret.find('^').unwrap();
    assert_eq!(&code_line[col..col + 1], "*", "caret under the '*':\n{s}");

    // An option key completes inside the #{ } given to sample, and the hint
    // shows sample's signature; then a long sample is stopped with Ctrl-C.
    t.type_text("let x = empty_latent(#{ width: 512, height: 512, frames: 33 }); x = sample(m, x, #{ positive: pos, cfg: 1.0, steps: 10000, leftov");
    t.keys(&["Tab"]);
    t.wait_for("leftover_noise: ");
    t.wait_for("sample(m, latent, opts) -> Tensor");
    t.type_text("false });");
    t.keys(&["Enter"]);
    t.wait_for("kept euler [");
    t.keys(&["C-c"]);
    let s = t.wait_for("variables and loaded models are kept");
    assert!(s.contains("cancelled (Ctrl-C)"), "{s}");

    // The model is still loaded, and the session still works.
    t.type_text(".models");
    t.keys(&["Enter"]);
    let s = t.wait_for("loaded: kept");
    assert!(s.contains("original.safetensors"), "{s}");
    t.type_text("print(`still ${m.name} ${twice(2)}`);");
    t.keys(&["Enter"]);
    let s = t.wait_for("still kept 4");
    t.type_text(".quit");
    t.keys(&["Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    if let Some(p) = std::env::var_os("BATON_REPL_SCREEN") {
        std::fs::write(Path::new(&p), &s).unwrap();
    }
    assert!(
        home.path().join("baton/history").exists(),
        "history is saved in the data dir"
    );
}
