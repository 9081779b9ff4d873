//! `baton run`: a script run in a fresh session, its trace and its run
//! manifest (`run.json`) written whether it succeeded or not.

use super::{manifest, Session, SessionConfig};
use crate::runtime::cancel::Stop;
use crate::runtime::memstat;
use std::path::{Path, PathBuf};

/// A run stopped by Ctrl-C or `--timeout`: the message, and why, for the
/// command line's exit code.
#[derive(Debug)]
pub struct Stopped(pub Stop, pub String);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Stopped {}

/// `out/<UTC timestamp>-<script stem>/`: each run its own directory, so
/// results never overwrite each other and sort by time.
pub fn default_out_dir(script: &Path) -> PathBuf {
    let stem = script
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "script".into());
    let ts = manifest::utc_timestamp(std::time::SystemTime::now(), false);
    let base = PathBuf::from("out").join(format!("{ts}-{stem}"));
    // Two runs of one script in the same second get their own directories.
    (1..)
        .map(|n| match n {
            1 => base.clone(),
            n => PathBuf::from(format!("{}-{n}", base.display())),
        })
        .find(|p| !p.exists())
        .unwrap_or(base)
}

/// Runs `file` and writes `run.json` beside its outputs, whether it
/// succeeded or not. A run that Ctrl-C or the timeout stopped fails with
/// [`Stopped`].
pub fn run_with_manifest(
    file: &Path,
    cfg: &SessionConfig,
    out_dir: &Path,
    hash_models: bool,
    trace: Option<&Path>,
) -> anyhow::Result<()> {
    let started = std::time::SystemTime::now();
    let clock = std::time::Instant::now();
    let baseline = memstat::rss();
    let mut s = Session::new(cfg);
    if trace.is_some() {
        s.runtime.borrow_mut().timeline.sample_rss(20);
    }
    let result = s.run_file(file);
    if let Some(path) = trace {
        let t =
            s.runtime
                .borrow_mut()
                .timeline
                .finish(&file.display().to_string(), false, baseline);
        let json = serde_json::to_vec_pretty(&t)?;
        crate::media::write_atomically(path, |tmp| {
            std::fs::write(tmp, &json).map_err(|e| e.to_string())
        })
        .map_err(anyhow::Error::msg)?;
        eprintln!(
            "trace written to {} ({} events, {} RSS samples)",
            path.display(),
            t.events.len(),
            t.rss.len()
        );
    }
    let err = result.as_ref().err().map(|e| match s.last_stop {
        Some(stop) => format!("{stop}: {e}"),
        None => e.clone(),
    });
    let rt = s.runtime.borrow();
    let info = manifest::RunInfo {
        script: file,
        started,
        seconds: clock.elapsed().as_secs_f64(),
        error: err.as_deref(),
        parameters: s.params.borrow().resolved(),
        journal: &rt.journal,
        peak_device: rt.timeline.peak_device(),
        peak_rss: memstat::peak_rss(),
        out_dir,
        hash_all: hash_models,
    };
    match manifest::write(&info) {
        Ok(p) => eprintln!("run manifest: {}", p.display()),
        Err(e) => eprintln!("warning: could not write the run manifest: {e}"),
    }
    match (err, s.last_stop) {
        (None, _) => Ok(()),
        (Some(e), Some(stop)) => Err(Stopped(stop, e).into()),
        (Some(e), None) => Err(anyhow::Error::msg(e)),
    }
}
