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

/// Keeps freed activations for reuse and gives memory back at deletes.
///
/// A forward allocates and frees tensors of megabytes by the hundred. Served
/// by mmap (glibc's choice above its threshold, which this once set to
/// 64 KiB), each one cost the kernel's page faults and page clearing anew:
/// a third of the umT5 encode's samples were in the kernel. So allocations
/// up to 256 MiB come from the heap and stay there when freed (no trimming
/// on free), and `trim`, which `delete_model` calls, hands every free page
/// back: RSS returns after a delete as before. Weights kept in their file's
/// dtype are file mappings (`checkpoint::mapped`), unmapped on free.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator tuning parameters.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
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
