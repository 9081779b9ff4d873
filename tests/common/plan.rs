//! `baton plan` against a measured run: the prediction must land within
//! 15% of the RSS the kernel reported while the same script really ran.

use serde_json::Value;
use std::path::Path;

/// The agreed tolerance for predicted vs measured peak memory.
pub const PEAK_TOLERANCE: f64 = 0.15;

/// `baton plan --json SCRIPT`, parsed.
pub fn plan_json(script: &str, cache: &Path) -> Value {
    let run = super::baton(
        &["plan".as_ref(), "--json".as_ref(), script.as_ref()],
        Some(cache),
    );
    run.assert_ok();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Highest measured RSS between `from` and `to` seconds (RSS samples and
/// per-event readings of a `--trace` file).
pub fn measured_peak(trace: &Value, from: f64, to: f64) -> u64 {
    let samples = trace["rss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_f64().unwrap(), s[1].as_u64().unwrap()));
    let events = trace["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["t"].as_f64().unwrap(), e["rss"].as_u64().unwrap()));
    samples
        .chain(events)
        .filter(|(t, _)| (from..=to).contains(t))
        .map(|(_, r)| r)
        .max()
        .unwrap_or(0)
}

/// Highest prediction over plan events `range` (indices into the events).
pub fn predicted_peak(plan: &Value, range: std::ops::Range<usize>) -> u64 {
    plan["predicted"].as_array().unwrap()[range]
        .iter()
        .map(|v| v.as_u64().unwrap())
        .max()
        .unwrap_or(0)
}

/// Bytes of `key` ("resident", "offloaded", "host") over every model at an event.
pub fn held(event: &Value, key: &str) -> u64 {
    event["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[key].as_u64().unwrap())
        .sum()
}

pub fn assert_close(what: &str, predicted: u64, measured: u64) {
    let rel = (predicted as f64 - measured as f64).abs() / measured as f64;
    println!(
        "{what}: predicted {:.1} MiB, measured {:.1} MiB ({:+.1}%)",
        predicted as f64 / 1048576.0,
        measured as f64 / 1048576.0,
        100.0 * (predicted as f64 / measured as f64 - 1.0)
    );
    assert!(
        rel <= PEAK_TOLERANCE,
        "{what}: predicted {predicted} vs measured {measured} bytes ({:.1}% off, limit {:.0}%)",
        rel * 100.0,
        PEAK_TOLERANCE * 100.0
    );
}
