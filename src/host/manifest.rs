//! `run.json`: what a `baton run` needs to be reproduced and shared.
//!
//! Written atomically at the end of every run, failed ones too (with the
//! error), into the run's output directory: the script and its hash, the
//! parameters as they resolved, every model file (sha256 when it is small
//! enough to hash quickly or `--hash-models` asks, else size and mtime,
//! which identify a local file without reading 14 GB), the seeds of each
//! sampling pass, timings and peak memory.

use crate::runtime::journal::Journal;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Files up to this size are hashed unless `--hash-models` says otherwise.
pub const HASH_LIMIT: u64 = 256 << 20;

pub struct RunInfo<'a> {
    pub script: &'a Path,
    pub started: SystemTime,
    pub seconds: f64,
    pub error: Option<&'a str>,
    pub parameters: serde_json::Map<String, Value>,
    pub journal: &'a Journal,
    /// Most bytes the ledger held at once (from the runtime's timeline).
    pub peak_device: u64,
    pub peak_rss: u64,
    pub out_dir: &'a Path,
    /// Hash every model file, whatever its size.
    pub hash_all: bool,
}

/// The manifest as JSON.
pub fn build(r: &RunInfo) -> Value {
    let script_hash = sha256_file(r.script).unwrap_or_else(|e| format!("unreadable: {e}"));
    let mut seen = Vec::new();
    let models: Vec<Value> = r
        .journal
        .loads
        .iter()
        .filter(|l| {
            let new = !seen.contains(&l.path);
            seen.push(l.path.clone());
            new
        })
        .map(|l| {
            let mut v = json!({
                "name": l.name,
                "requested": l.requested,
                "path": l.path.display().to_string(),
                "arch": l.arch,
            });
            if l.arch.starts_with(crate::runtime::scripted::ARCH) {
                // model_from_fn: a function of the script (hashed above),
                // defined at `path`; no file to identify.
                v["script_function"] = true.into();
            } else {
                identify(&l.path, r.hash_all, v.as_object_mut().expect("object"));
            }
            v
        })
        .collect();
    let samples: Vec<Value> = r
        .journal
        .samples
        .iter()
        .map(|s| {
            json!({
                "model": s.model, "seed": s.seed, "steps": s.steps, "explicit_sigmas": s.explicit_sigmas, "start": s.start,
                "end": s.end, "sampler": s.sampler, "scheduler": s.scheduler,
                "cfg": s.cfg, "shift": s.shift, "seconds": s.seconds,
            })
        })
        .collect();
    let seeds: Vec<u64> = r.journal.samples.iter().filter_map(|s| s.seed).collect();
    json!({
        "baton": env!("CARGO_PKG_VERSION"),
        "status": if r.error.is_some() { "error" } else { "ok" },
        "error": r.error,
        "script": r.script.display().to_string(),
        "script_sha256": script_hash,
        "started": utc_timestamp(r.started, true),
        "seconds": r.seconds,
        "parameters": r.parameters,
        "seeds": seeds,
        "models": models,
        "samples": samples,
        "peak_rss": r.peak_rss,
        "peak_device_bytes": r.peak_device,
        "out_dir": r.out_dir.display().to_string(),
    })
}

/// Writes `run.json` into `out_dir`, atomically.
pub fn write(r: &RunInfo) -> Result<std::path::PathBuf, String> {
    let path = r.out_dir.join("run.json");
    let text = serde_json::to_string_pretty(&build(r)).map_err(|e| e.to_string())? + "\n";
    crate::media::write_atomically(&path, |tmp| {
        std::fs::write(tmp, &text).map_err(|e| format!("{}: {e}", tmp.display()))
    })?;
    Ok(path)
}

/// Adds `sha256`, or `size` and `mtime` (seconds since the epoch), for `path`.
fn identify(path: &Path, hash_all: bool, v: &mut serde_json::Map<String, Value>) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            v.insert("error".into(), e.to_string().into());
            return;
        }
    };
    v.insert("size".into(), meta.len().into());
    if hash_all || meta.len() <= HASH_LIMIT {
        match sha256_file(path) {
            Ok(h) => {
                v.insert("sha256".into(), h.into());
                return;
            }
            Err(e) => {
                v.insert("error".into(), e.into());
            }
        }
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    v.insert("mtime".into(), mtime.into());
}

pub fn sha256_file(path: &Path) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// UTC time as `2026-11-28T17:50:03Z` (`iso`) or `20261128-175003` (for
/// directory names, which sort by time and need no quoting).
pub fn utc_timestamp(t: SystemTime, iso: bool) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if iso {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}")
    }
}

/// Howard Hinnant's days-to-civil (proleptic Gregorian), to avoid a date
/// crate for one timestamp.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(utc_timestamp(t, true), "2024-02-29T12:34:56Z");
        assert_eq!(utc_timestamp(t, false), "20240229-123456");
        assert_eq!(utc_timestamp(UNIX_EPOCH, true), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn sha256_matches_the_known_digest() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("abc");
        std::fs::write(&p, "abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
