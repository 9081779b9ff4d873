//! Stopping a running evaluation: Ctrl-C and the wall-clock deadline.
//!
//! One process-wide flag, because a signal handler can only touch globals.
//! The script engine polls it between operations, the sampler between
//! steps and the DiT between blocks, so a long `sample` stops within one
//! block's forward rather than at the end of the run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static CANCELLED: AtomicBool = AtomicBool::new(false);
/// The deadline in milliseconds since `epoch()`, plus one; 0 means none.
static DEADLINE_MS: AtomicU64 = AtomicU64::new(0);
/// The timeout the deadline came from, in milliseconds, for the message.
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Why an evaluation was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C (or [`request_cancel`]).
    Cancelled,
    /// The `--timeout` ran out.
    TimedOut(Duration),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Cancelled => write!(f, "cancelled (Ctrl-C)"),
            Stop::TimedOut(d) => write!(f, "timed out after {}s (--timeout)", d.as_secs_f64()),
        }
    }
}

/// Asks the running evaluation to stop at its next check.
pub fn request_cancel() {
    CANCELLED.store(true, Ordering::SeqCst);
}

/// Clears a cancel request (the REPL does this before each line).
pub fn reset() {
    CANCELLED.store(false, Ordering::SeqCst);
}

/// Starts (or, with None, clears) the wall-clock limit from now.
pub fn set_timeout(timeout: Option<Duration>) {
    match timeout {
        Some(t) => {
            let at = epoch().elapsed() + t;
            TIMEOUT_MS.store(t.as_millis() as u64, Ordering::SeqCst);
            DEADLINE_MS.store(at.as_millis() as u64 + 1, Ordering::SeqCst);
        }
        None => DEADLINE_MS.store(0, Ordering::SeqCst),
    }
}

/// Whether the evaluation should stop, and why.
pub fn check() -> Result<(), Stop> {
    if CANCELLED.load(Ordering::Relaxed) {
        return Err(Stop::Cancelled);
    }
    let d = DEADLINE_MS.load(Ordering::Relaxed);
    if d != 0 && epoch().elapsed().as_millis() as u64 + 1 >= d {
        let t = TIMEOUT_MS.load(Ordering::Relaxed);
        return Err(Stop::TimedOut(Duration::from_millis(t)));
    }
    Ok(())
}

/// [`check`] as a candle error, for code inside a forward or a sampler.
pub fn check_candle(at: impl FnOnce() -> String) -> candle_core::Result<()> {
    check().map_err(|s| candle_core::Error::Msg(format!("{s} {}", at())))
}

extern "C" fn on_sigint(_: libc::c_int) {
    // Only async-signal-safe calls here: an atomic swap and write(2).
    if CANCELLED.swap(true, Ordering::SeqCst) {
        const MSG: &[u8] = b"\nbaton: interrupted twice, exiting now\n";
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(130);
        }
    }
    const MSG: &[u8] = b"\nbaton: cancelling (Ctrl-C again to quit at once)\n";
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
    }
}

/// Makes Ctrl-C set the cancel flag instead of killing the process; a
/// second Ctrl-C before the evaluation notices exits at once with 130.
pub fn install_sigint_handler() {
    epoch();
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}
