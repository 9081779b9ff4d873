//! Opt-in timing spans over the DiT forward's kernels, for the profile
//! breakdown `baton bench speed` prints when `BATON_DIT_SPANS=1`: each
//! leaf op (matmul, casts, attention, norms, RoPE, residual adds, GELU)
//! adds its wall time to a named total. Off, a span costs one relaxed load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

/// Turns the spans on or off and clears the totals.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Runs `f`, adding its wall time to `name` when spans are on.
#[inline]
pub fn span<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let s = Instant::now();
    let out = f();
    let dt = s.elapsed().as_secs_f64();
    let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    match t.iter_mut().find(|(n, _)| *n == name) {
        Some((_, v)) => *v += dt,
        None => t.push((name, dt)),
    }
    out
}

/// The totals so far, seconds per span name, in first-seen order.
pub fn totals() -> Vec<(&'static str, f64)> {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
