//! RSS follows the ledger: the process RSS (from /proc, after trimming the
//! allocator) grows by what the ledger says a load holds and returns to its
//! baseline after delete_model, within max(8 MiB, 5%). The delete-frees-memory
//! tests each carried their own copy of these lines. RSS is process-wide, so
//! a test using these must be alone in its binary.

use baton::runtime::memstat;

pub const MIB: f64 = (1u64 << 20) as f64;

/// The process RSS in bytes, after handing freed memory back to the OS.
pub fn rss() -> f64 {
    memstat::trim();
    memstat::rss() as f64
}

/// The allowance between RSS and the ledger: max(8 MiB, 5% of `bytes`).
pub fn tolerance(bytes: f64) -> f64 {
    (8.0 * MIB).max(0.05 * bytes)
}

/// Asserts RSS grew by `held` bytes (what the ledger counts) within `tol`;
/// `holds` says what holds them, for the failure message.
pub fn assert_rss_grew_by(grew: f64, held: f64, tol: f64, holds: &str) {
    assert!(
        (grew - held).abs() <= tol,
        "{holds} {:.1} MiB but RSS grew {:.1} MiB",
        held / MIB,
        grew / MIB
    );
}

/// Asserts RSS is back to `before` within `tol`; `after_what` names the
/// moment, for the failure message.
pub fn assert_rss_back(after: f64, before: f64, tol: f64, after_what: &str) {
    assert!(
        (after - before).abs() <= tol,
        "RSS after {after_what} {:.1} MiB vs {:.1} MiB before",
        after / MIB,
        before / MIB
    );
}
