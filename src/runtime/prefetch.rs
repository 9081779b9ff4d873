//! Reading the next model's file into the page cache while the current one
//! samples, so `delete_model(high); load_model(low)` finds `low` in memory
//! instead of on disk.
//!
//! The read goes to the kernel's page cache, not to a buffer of ours: the
//! pages are reclaimable, count against no budget, and `load_model` maps the
//! same pages when it reads. Nothing is held in the process, so `ram()` is
//! unaffected.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// A file being read in the background.
pub struct Prefetch {
    pub path: PathBuf,
    read: Arc<AtomicU64>,
    thread: JoinHandle<Result<f64, String>>,
}

impl Prefetch {
    /// Starts reading `path` on a helper thread.
    pub fn start(path: &Path) -> Self {
        let read = Arc::new(AtomicU64::new(0));
        let (p, r) = (path.to_path_buf(), read.clone());
        let thread = std::thread::spawn(move || prefetch_file(&p, &r));
        Self {
            path: path.to_path_buf(),
            read,
            thread,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the read to end; returns the bytes read and the seconds the
    /// read took.
    pub fn wait(self) -> Result<(u64, f64), String> {
        let secs = self
            .thread
            .join()
            .map_err(|_| format!("prefetch of {} failed", self.path.display()))??;
        Ok((self.read.load(Ordering::Relaxed), secs))
    }
}

/// Reads the whole file once, sequentially, through a small reused buffer.
fn prefetch_file(path: &Path, read: &AtomicU64) -> Result<f64, String> {
    let started = Instant::now();
    let mut f = File::open(path).map_err(|e| format!("prefetch {}: {e}", path.display()))?;
    advise(&f, Advice::WillNeed);
    // Small: the buffer is the only process memory a prefetch holds.
    read_through(&mut f, 1 << 20, |n| {
        read.fetch_add(n, Ordering::Relaxed);
    })
    .map_err(|e| format!("prefetch {}: {e}", path.display()))?;
    Ok(started.elapsed().as_secs_f64())
}

/// Reads `f` to its end through one reused buffer of `buf_bytes`, calling
/// `on_read` with each chunk's length; returns the bytes read. What a prefetch
/// does, and the plain-read baseline the load benchmarks compare against.
pub fn read_through(
    f: &mut impl Read,
    buf_bytes: usize,
    mut on_read: impl FnMut(u64),
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; buf_bytes];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        on_read(n as u64);
    }
}

pub enum Advice {
    /// Start reading ahead now.
    WillNeed,
    /// Drop the file's clean pages from the page cache (for cold-cache
    /// benchmarks).
    DontNeed,
}

/// `posix_fadvise` over the whole file; advice only, so failures are ignored.
pub fn advise(f: &File, advice: Advice) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let a = match advice {
            Advice::WillNeed => libc::POSIX_FADV_WILLNEED,
            Advice::DontNeed => libc::POSIX_FADV_DONTNEED,
        };
        // SAFETY: the descriptor is open for the duration of the call.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, a);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, advice);
}

/// Evicts a file from the page cache, so the next read comes from disk.
pub fn evict(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    f.sync_all().ok();
    advise(&f, Advice::DontNeed);
    Ok(())
}
