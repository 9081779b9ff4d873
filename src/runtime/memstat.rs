//! What the kernel says about our memory: RSS and peak RSS from /proc/self.
//!
//! The ledger is what we *think* we hold; these numbers are what we *do*
//! hold, and tests compare the two.

fn status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident set size in bytes (0 where /proc is unavailable).
pub fn rss() -> u64 {
    status_kib("VmRSS:").unwrap_or(0) * 1024
}

/// Peak resident set size in bytes since start or the last `reset_peak`.
pub fn peak_rss() -> u64 {
    status_kib("VmHWM:").unwrap_or(0) * 1024
}

/// Resets the kernel's peak-RSS mark to the current RSS (Linux `clear_refs` 5).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Total physical memory in bytes, from /proc/meminfo.
pub fn total_ram() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(16 << 30, |k| k * 1024)
}

/// Makes freed weights go back to the kernel. glibc keeps freed heap memory
/// for reuse; allocations of 64 KiB and more are served by mmap instead (and so
/// unmapped on free), and `trim` returns what small-chunk arenas still hold.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator tuning parameters.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 10);
            }
        });
    }
}

/// Returns free heap memory to the kernel.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
