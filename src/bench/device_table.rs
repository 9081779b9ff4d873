//! The building blocks of the device table (`bench device`), below both
//! of its files (`device.rs`, the memory sections and the run;
//! `device_speed.rs`, the speed sections): the table's rows, temporary
//! bench checkpoints, and device memory as the driver (a card) or the
//! kernel (the CPU) counts it.

use super::load::TempFile;
use crate::runtime::device::{driver_memory, driver_memory_now};
use crate::runtime::memstat;
use candle_core::Device;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A bench checkpoint in `dir`, removed when dropped.
pub(super) fn temp_file(dir: &Path, what: &str) -> TempFile {
    TempFile(dir.join(format!(
        "baton-bench-{what}-{}.safetensors",
        std::process::id()
    )))
}

/// Memory as the device counts it: the driver's used bytes on a card,
/// RSS on the CPU.
pub(super) fn used_now(dev: &Device) -> u64 {
    match driver_memory(dev) {
        Some(m) => m.used(),
        None => {
            memstat::trim();
            memstat::rss()
        }
    }
}

/// The highest memory use while it runs: a thread polling the driver on a
/// card, the kernel's VmHWM on the CPU.
pub(super) struct PeakMeter {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakMeter {
    pub(super) fn start(dev: &Device) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = if dev.is_cuda() {
            let (dev, stop, peak) = (dev.clone(), stop.clone(), peak.clone());
            Some(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(m) = driver_memory_now(&dev) {
                        peak.fetch_max(m.used(), Ordering::Relaxed);
                    }
                    std::thread::sleep(std::time::Duration::from_micros(500));
                }
            }))
        } else {
            memstat::trim();
            memstat::reset_peak();
            None
        };
        Self { stop, peak, thread }
    }

    pub(super) fn finish(mut self, dev: &Device) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => {
                let _ = t.join();
                self.peak.load(Ordering::Relaxed).max(used_now(dev))
            }
            None => memstat::peak_rss(),
        }
    }
}

pub(super) fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Table rows: what, figure, how it was taken.
#[derive(Default)]
pub(super) struct Table(Vec<(String, String, String)>);

impl Table {
    pub(super) fn row(
        &mut self,
        what: impl Into<String>,
        figure: impl Into<String>,
        note: impl Into<String>,
    ) {
        self.0.push((what.into(), figure.into(), note.into()));
    }

    pub(super) fn render(&self) -> String {
        let w0 = self.0.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let w1 = self.0.iter().map(|r| r.1.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (a, b, c) in &self.0 {
            let _ = writeln!(out, "{a:<w0$}  {b:>w1$}  {c}");
        }
        out
    }

    /// Whether a row says FAILED, in its figure or its note.
    pub(super) fn any_failed(&self) -> bool {
        self.0
            .iter()
            .any(|r| r.1 == "FAILED" || r.2.contains("FAILED"))
    }
}
