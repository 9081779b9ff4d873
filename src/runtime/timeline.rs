//! The memory timeline: every ledger change and every use of a model, with
//! the script position, a timestamp and the bytes involved.
//!
//! The same record serves two readers. `baton run --trace FILE.json` adds
//! measured RSS samples and writes it out, so a run can be drawn afterwards
//! (`baton trace`); `baton plan` records it on a dry runtime, where nothing is
//! measured and the activation bytes are estimates, and reads the predicted
//! peak and the co-resident warnings from it.

use super::ledger::Ledger;
use super::memstat;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Bytes one model holds at an instant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelBytes {
    pub name: String,
    /// On the device: weights, stream buffers and LoRA factors.
    pub resident: u64,
    /// Streamed from the checkpoint at every forward.
    pub offloaded: u64,
    /// Held in host memory after `offload_model`.
    pub host: u64,
}

/// One thing that happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Seconds since the run started.
    pub t: f64,
    /// Script position, e.g. "demo.rhai:38".
    pub at: String,
    /// "load", "delete", "offload", "reload", "lora", "sample", "predict",
    /// "encode_text", "decode", "encode", "budget".
    pub kind: String,
    /// The model concerned ("" for session-wide events).
    pub model: String,
    /// Every loaded model's bytes after the event.
    pub models: Vec<ModelBytes>,
    /// Working memory of the operation beyond the weights: for compute, an
    /// estimate from `runtime::activations`; for a load, the file bytes
    /// mapped at once while reading (0 for events that allocate nothing).
    pub activations: u64,
    /// The budget at the time.
    pub budget: u64,
    /// Measured RSS when the event was recorded. On a dry run this is the
    /// planning process itself: no weights, but the script's own tensors
    /// (latents, contexts), which a real run holds too.
    pub rss: u64,
    /// Free text for the reader, e.g. "4 steps, 128 MiB streamed".
    pub note: String,
}

impl Event {
    pub fn resident(&self) -> u64 {
        self.models.iter().map(|m| m.resident).sum()
    }

    pub fn offloaded(&self) -> u64 {
        self.models.iter().map(|m| m.offloaded).sum()
    }

    pub fn host(&self) -> u64 {
        self.models.iter().map(|m| m.host).sum()
    }
}

/// A recorded run, as written to `--trace FILE.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Trace {
    pub script: String,
    /// True for `baton plan` (estimates only).
    pub dry: bool,
    /// RSS before the script ran.
    pub baseline_rss: u64,
    pub events: Vec<Event>,
    /// (seconds, RSS bytes), sampled in the background during a traced run.
    pub rss: Vec<(f64, u64)>,
    /// Highest RSS the kernel saw during the run (VmHWM), 0 on a dry run.
    pub peak_rss: u64,
}

/// Collects events as the runtime works; cheap enough to be always on.
pub struct Timeline {
    start: Instant,
    events: Vec<Event>,
    sampler: Option<RssSampler>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            events: Vec::new(),
            sampler: None,
        }
    }
}

/// What the caller knows about an event beyond the ledger.
pub struct Mark<'a> {
    pub at: &'a str,
    pub kind: &'a str,
    pub model: &'a str,
    pub activations: u64,
    pub note: String,
}

impl Timeline {
    /// Appends an event with the ledger's state after it.
    pub fn record(&mut self, ledger: &Ledger, mark: Mark<'_>) {
        let models = ledger
            .entries()
            .map(|(_, e)| ModelBytes {
                name: e.name.clone(),
                resident: e.resident(),
                offloaded: e.offloaded,
                host: e.host,
            })
            .collect();
        self.events.push(Event {
            t: self.start.elapsed().as_secs_f64(),
            at: mark.at.to_string(),
            kind: mark.kind.to_string(),
            model: mark.model.to_string(),
            models,
            activations: mark.activations,
            budget: ledger.budget(),
            rss: memstat::rss(),
            note: mark.note,
        });
    }

    /// Most bytes the ledger held on the device at once, at any event.
    pub fn peak_device(&self) -> u64 {
        self.events.iter().map(Event::resident).max().unwrap_or(0)
    }

    /// Starts sampling RSS every `every_ms` in the background (for `--trace`).
    pub fn sample_rss(&mut self, every_ms: u64) {
        if self.sampler.is_none() {
            self.sampler = Some(RssSampler::start(self.start, every_ms));
        }
    }

    /// The record so far; stops the RSS sampler.
    pub fn finish(&mut self, script: &str, dry: bool, baseline_rss: u64) -> Trace {
        let rss = self
            .sampler
            .take()
            .map(RssSampler::stop)
            .unwrap_or_default();
        Trace {
            rss,
            ..self.snapshot(script, dry, baseline_rss)
        }
    }

    /// The events so far (without RSS samples), leaving the timeline running.
    pub fn snapshot(&self, script: &str, dry: bool, baseline_rss: u64) -> Trace {
        Trace {
            script: script.to_string(),
            dry,
            baseline_rss,
            events: self.events.clone(),
            rss: Vec::new(),
            peak_rss: if dry { 0 } else { memstat::peak_rss() },
        }
    }
}

/// A thread that reads /proc/self/statm at a fixed interval.
struct RssSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(origin: Instant, every_ms: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let v = (origin.elapsed().as_secs_f64(), memstat::rss());
                if let Ok(mut o) = out.lock() {
                    o.push(v);
                }
                std::thread::sleep(std::time::Duration::from_millis(every_ms));
            }
        });
        Self {
            stop,
            samples,
            thread,
        }
    }

    fn stop(self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let mut v = self.samples.lock().map(|v| v.clone()).unwrap_or_default();
        v.push((v.last().map_or(0.0, |l| l.0), memstat::rss()));
        v
    }
}
