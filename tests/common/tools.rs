//! External programs some tests drive (tmux, ffmpeg/ffprobe). `.ci/run`
//! installs them; under CI (the `CI` environment variable set) a missing one
//! fails the test instead of skipping it.

use std::process::Command;

/// True when `tool` runs (`tool <probe args>` exits 0). When it does not:
/// under CI this panics (the test fails); elsewhere it says so on stderr and
/// returns false, and the caller skips.
pub fn available(tool: &str, probe: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(probe)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed and CI is set: this test needs it \
             (.ci/run installs it: apt-get install -y tmux ffmpeg)"
        );
        // Straight to the stream, past the test harness's capture, so a
        // skip is seen even when the test passes.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "{tool} is not installed: SKIPPING this test (under CI it fails)"
        );
    }
    ok
}
