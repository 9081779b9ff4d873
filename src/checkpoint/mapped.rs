//! Tensors whose buffers are the page cache's own pages: loads without a copy.
//!
//! A load that copies a checkpoint into fresh memory pays for every page
//! twice: the kernel faults and clears it, then `pread` fills it. On the
//! development VM that bounded `load_model` at a third of a plain read,
//! however the copy was arranged (see `source::read_fresh`). Mapping the
//! file privately instead hands the tensor the pages the page cache already
//! holds: nothing is cleared or copied, and `MADV_POPULATE_READ` enters them
//! in the page table in one call, so RSS (and `ram()`) shows them at once.
//! A write to such a page copies it first (copy-on-write); the file is never
//! changed.
//!
//! candle's CPU storage owns a `Vec`, and a `Vec` frees its buffer through
//! the global allocator. So the mapping is made by the global allocator
//! itself: [`Allocator`] wraps the system allocator, and hands out file
//! mappings through [`map_vec`] from an address range it reserved (no
//! memory, just addresses). Freeing a pointer in that range unmaps it, and
//! one comparison tells the two kinds apart. A binary opts in by installing
//! it (`baton`'s `main.rs` does); anywhere else [`map_vec`] answers `None`
//! and the caller copies, as before.
//!
//! The same allocator starts every block of [`LINE_FROM`] bytes or more on a
//! 64-byte cache line. glibc hands large blocks out 16 bytes past a page
//! boundary, so every 64-byte row a kernel loads from such a tensor (an AMX
//! tile row, a zmm register) straddles two lines and costs two accesses:
//! the AMX linears ran at 0.55-0.65x of their aligned speed on misaligned
//! operands (`baton bench speed` shows the whole forward's share). The
//! rounding is a function of the layout alone, so `dealloc` and `realloc`
//! see the same alignment `alloc` asked for.
//!
//! The price of a mapping is the one every mmap reader pays: a checkpoint
//! truncated or rewritten in place while a model loaded from it is
//! resident makes the next read of a dropped page fail with SIGBUS.
//! Writers that replace the file (write a new one, then rename, as
//! `baton import` and most tools do) are safe. `BATON_LOAD_COPY=1` turns
//! mapping off.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The global allocator that can also hand out file mappings; see the module
/// docs. Install it with `#[global_allocator]`.
pub struct Allocator;

/// Set by the first allocation through [`Allocator`]: proof that it is the
/// global allocator, so a `Vec` built on one of its mappings is freed by it.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The reserved address range `[BASE, BASE + LEN)`; `LEN` is 0 until the
/// first mapping reserves it.
static BASE: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
/// Bytes of file mappings live now (for tests and `bench load`).
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// Addresses to reserve: room for many 28 GB experts at once. A
/// `PROT_NONE`, `MAP_NORESERVE` mapping costs no memory and no commit.
const RESERVE: [usize; 3] = [1 << 44, 1 << 41, 1 << 38];
/// The huge page size mappings are placed for.
const HUGE: usize = 2 << 20;
/// Free extents kept; past that, a freed extent's addresses are left unused
/// (they still cost no memory).
const MAX_EXTENTS: usize = 4096;

/// Blocks of at least this many bytes start on a cache line (see the module
/// docs): anything a kernel tiles is larger, and below it the rounding would
/// cost more than it saves.
pub const LINE_FROM: usize = 16 << 10;
/// A cache line.
const LINE: usize = 64;

/// `layout` as the system allocator is asked for it: at least [`LINE`]
/// aligned from [`LINE_FROM`] bytes on.
fn lined(layout: Layout) -> Layout {
    if layout.size() >= LINE_FROM && layout.align() < LINE {
        Layout::from_size_align(layout.size(), LINE).unwrap_or(layout)
    } else {
        layout
    }
}

/// The free parts of the reserved range, sorted by address, coalesced.
struct Extents {
    free: [(usize, usize); MAX_EXTENTS],
    n: usize,
}

/// `std`'s mutex does not allocate, so the allocator may take it.
static EXTENTS: Mutex<Extents> = Mutex::new(Extents {
    free: [(0, 0); MAX_EXTENTS],
    n: 0,
});

impl Extents {
    /// The first free extent of at least `len` bytes, cut from its start.
    fn take(&mut self, len: usize) -> Option<usize> {
        let i = self.free[..self.n].iter().position(|&(_, l)| l >= len)?;
        let (start, l) = self.free[i];
        if l == len {
            self.free.copy_within(i + 1..self.n, i);
            self.n -= 1;
        } else {
            self.free[i] = (start + len, l - len);
        }
        Some(start)
    }

    /// Like [`Self::take`], at an address congruent to `phase` modulo
    /// `align` (a power of two); the slack on both sides stays free.
    fn take_at_phase(&mut self, len: usize, align: usize, phase: usize) -> Option<usize> {
        let start = self.take(len + align)?;
        let at = start + (phase.wrapping_sub(start) & (align - 1));
        if at > start {
            self.give(start, at - start);
        }
        let end = start + len + align;
        if end > at + len {
            self.give(at + len, end - at - len);
        }
        Some(at)
    }

    /// Returns `[start, start + len)`, merged with its free neighbours.
    fn give(&mut self, start: usize, len: usize) {
        let i = self.free[..self.n].partition_point(|&(s, _)| s < start);
        let joins_prev = i > 0 && {
            let (s, l) = self.free[i - 1];
            s + l == start
        };
        let joins_next = i < self.n && start + len == self.free[i].0;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.free[i - 1].1 += len + self.free[i].1;
                self.free.copy_within(i + 1..self.n, i);
                self.n -= 1;
            }
            (true, false) => self.free[i - 1].1 += len,
            (false, true) => self.free[i] = (start, len + self.free[i].1),
            (false, false) if self.n < MAX_EXTENTS => {
                self.free.copy_within(i..self.n, i + 1);
                self.free[i] = (start, len);
                self.n += 1;
            }
            (false, false) => {}
        }
    }
}

/// The kernel's page size (4 KiB where it cannot be read).
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// Whether `p` lies in the reserved range (then it is a mapping of ours).
fn is_mapped(p: *mut u8) -> bool {
    (p as usize).wrapping_sub(BASE.load(Ordering::Relaxed)) < LEN.load(Ordering::Relaxed)
}

/// The whole pages a mapped buffer `[p, p + size)` occupies.
fn pages_of(p: *mut u8, size: usize) -> (usize, usize) {
    let page = page_size();
    let start = p as usize / page * page;
    (
        start,
        (p as usize + size.max(1) - start).next_multiple_of(page),
    )
}

/// Gives the pages of a mapped buffer back: the file mapping is replaced by
/// reserved addresses again, then the addresses return to the free list.
fn unmap(p: *mut u8, size: usize) {
    let (start, len) = pages_of(p, size);
    // SAFETY: `[start, start + len)` is one extent of our reservation that
    // held this buffer's mapping, which its owner has just given up.
    unsafe { reserve_at(start, len) };
    MAPPED.fetch_sub(len, Ordering::Relaxed);
    if let Ok(mut e) = EXTENTS.lock() {
        e.give(start, len);
    }
}

/// Maps `[addr, addr + len)` as reserved addresses: no access, no memory.
///
/// # Safety
/// The range must be ours to replace (inside the reservation and unused).
unsafe fn reserve_at(addr: usize, len: usize) -> bool {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED;
    // SAFETY: per the caller's contract.
    let p = unsafe { libc::mmap(addr as *mut _, len, libc::PROT_NONE, flags, -1, 0) };
    p != libc::MAP_FAILED
}

/// Reserves the address range once; false when none could be had.
fn reserve(e: &mut Extents) -> bool {
    if LEN.load(Ordering::Relaxed) != 0 {
        return true;
    }
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    for len in RESERVE {
        // SAFETY: a fresh mapping at an address of the kernel's choosing.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, flags, -1, 0) };
        if p != libc::MAP_FAILED {
            e.free[0] = (p as usize, len);
            e.n = 1;
            BASE.store(p as usize, Ordering::Relaxed);
            LEN.store(len, Ordering::Release);
            return true;
        }
    }
    false
}

/// Plain numbers any bit pattern of which is a value.
pub trait Pod: Copy {}
impl Pod for u16 {}
impl Pod for f32 {}

/// Whether loads map files: [`Allocator`] is the global allocator and
/// `BATON_LOAD_COPY` is not set.
pub fn enabled() -> bool {
    INSTALLED.load(Ordering::Relaxed)
        && cfg!(target_os = "linux")
        && cfg!(target_endian = "little")
        && std::env::var_os("BATON_LOAD_COPY").is_none_or(|v| v.is_empty() || v == "0")
}

/// Bytes of file pages mapped into tensors now.
pub fn mapped_bytes() -> usize {
    MAPPED.load(Ordering::Relaxed)
}

/// `n` values of `file` at byte `offset`, as a `Vec` whose buffer is a
/// private mapping of the file, its pages entered from the page cache.
///
/// `None` when mapping is off or not possible here (see [`enabled`]; an
/// offset not aligned for `T`, an empty tensor, the reservation full): the
/// caller then copies. An error when the file cannot be mapped or read.
pub fn map_vec<T: Pod>(
    file: &std::fs::File,
    offset: u64,
    n: usize,
) -> std::io::Result<Option<Vec<T>>> {
    use std::os::fd::AsRawFd;
    let size = n * std::mem::size_of::<T>();
    if !enabled() || n == 0 || !offset.is_multiple_of(std::mem::align_of::<T>() as u64) {
        return Ok(None);
    }
    // A range past the end would map, then fault with SIGBUS on first read.
    if offset + size as u64 > file.metadata()?.len() {
        return Err(ends_early());
    }
    let page = page_size() as u64;
    let file_start = offset / page * page;
    let delta = (offset - file_start) as usize;
    let len = (delta + size).next_multiple_of(page as usize);
    // At the file offset's phase modulo 2 MiB, so that page-cache folios of
    // that size can be mapped whole (one TLB entry each): the GEMMs stream
    // the weights, and with 4 KiB entries they ran ~5% slower.
    let phase = (file_start % HUGE as u64) as usize;
    let Some(addr) = EXTENTS.lock().ok().and_then(|mut e| {
        if !reserve(&mut e) {
            None
        } else if len >= HUGE {
            e.take_at_phase(len, HUGE, phase)
        } else {
            e.take(len)
        }
    }) else {
        return Ok(None);
    };
    let flags = libc::MAP_PRIVATE | libc::MAP_FIXED;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: `[addr, addr + len)` is an extent of our reservation that we
    // just took; MAP_FIXED replaces its reserved pages with the file's.
    let p = unsafe {
        libc::mmap(
            addr as *mut _,
            len,
            prot,
            flags,
            file.as_raw_fd(),
            file_start as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        let err = std::io::Error::last_os_error();
        if let Ok(mut e) = EXTENTS.lock() {
            e.give(addr, len);
        }
        return Err(err);
    }
    MAPPED.fetch_add(len, Ordering::Relaxed);
    if len >= HUGE {
        // SAFETY: advice on a live mapping of ours; contents unchanged.
        unsafe { libc::madvise(addr as *mut _, len, libc::MADV_HUGEPAGE) };
    }
    let data = (addr + delta) as *mut T;
    if let Err(err) = populate(addr, len) {
        unmap(data.cast(), size);
        return Err(err);
    }
    // SAFETY: `data` points at `n` initialised, aligned values (file bytes;
    // `T: Pod`) in memory the global allocator (ours: `enabled`) considers
    // allocated with the layout of `[T; n]`, and frees by unmapping.
    Ok(Some(unsafe { Vec::from_raw_parts(data, n, n) }))
}

/// Enters the file's pages of `[addr, addr + len)` in the page table, read
/// only, so they count in RSS at once and the first reads do not fault.
/// Split between threads for large tensors. A kernel before 5.14 has no
/// `MADV_POPULATE_READ`; there one byte of each page is read instead (the
/// caller has checked the range lies within the file).
fn populate(addr: usize, len: usize) -> std::io::Result<()> {
    const MADV_POPULATE_READ: libc::c_int = 22;
    const PARALLEL: usize = 64 << 20;
    let page = page_size();
    let one = |start: usize, end: usize| -> std::io::Result<()> {
        if end <= start {
            return Ok(());
        }
        // SAFETY: the range is part of a live mapping of ours.
        let r = unsafe { libc::madvise(start as *mut _, end - start, MADV_POPULATE_READ) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) => {
                for p in (start..end).step_by(page) {
                    // SAFETY: a readable page of a live mapping of ours,
                    // backed by the file (checked by the caller).
                    unsafe { std::ptr::read_volatile(p as *const u8) };
                }
                Ok(())
            }
            Some(libc::EFAULT) => Err(ends_early()),
            _ => Err(e),
        }
    };
    in_page_parts(len, PARALLEL, |start, end| one(addr + start, addr + end))
}

/// The error for a tensor whose bytes run past the end of its file.
fn ends_early() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the file ends before this tensor's end",
    )
}

/// Runs `f(start, end)` over `[0, len)` cut into parts on page boundaries
/// (so no page is touched by two threads), one per thread, up to four, when
/// `len` is at least `parallel_from` bytes; else once over the whole range.
/// The first error is returned, after every part has run.
pub(crate) fn in_page_parts(
    len: usize,
    parallel_from: usize,
    f: impl Fn(usize, usize) -> std::io::Result<()> + Sync,
) -> std::io::Result<()> {
    let threads = if len >= parallel_from {
        std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(4)
    } else {
        1
    };
    if threads == 1 {
        return f(0, len);
    }
    let part = len.div_ceil(threads).next_multiple_of(page_size());
    let run = |k: usize| f((k * part).min(len), ((k + 1) * part).min(len));
    std::thread::scope(|s| {
        let rest: Vec<_> = (1..threads).map(|k| s.spawn(move || run(k))).collect();
        let first = run(0);
        rest.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a load thread panicked")))
            })
            .fold(first, |acc, r| acc.and(r))
    })
}

// SAFETY: every block not in the reservation comes from and goes to
// `System` with the layout `lined` makes of the caller's (a function of the
// layout alone, so the same at both ends); blocks in it are whole-page file
// mappings made by `map_vec` and are only ever unmapped here, once, by their
// owner's free.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        // SAFETY: forwarded contract (`lined` keeps the size and only
        // raises the alignment).
        unsafe { System.alloc(lined(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(lined(layout)) }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if is_mapped(p) {
            unmap(p, layout.size());
        } else {
            // SAFETY: `p` came from `alloc` with `lined(layout)`.
            unsafe { System.dealloc(p, lined(layout)) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: a valid layout (the caller's contract on `new_size`).
        let to = lined(unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) });
        let from = lined(layout);
        if !is_mapped(p) && from.align() == to.align() {
            // SAFETY: `p` came from `alloc` with `from`.
            return unsafe { System.realloc(p, from, new_size) };
        }
        // A move, as `alloc` would place the block: a mapped buffer goes to
        // ordinary memory (no tensor grows its buffer; this keeps the
        // contract should anything else), and a block across `LINE_FROM`
        // changes alignment.
        // SAFETY: `to` is a valid, non-zero layout.
        let q = unsafe { System.alloc(to) };
        if !q.is_null() {
            // SAFETY: both blocks are live and at least this long; `p` is
            // freed as `dealloc` frees it (unmapped, or returned to `System`).
            unsafe {
                std::ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::Extents;

    fn extents(v: &[(usize, usize)]) -> Extents {
        let mut e = Extents {
            free: [(0, 0); super::MAX_EXTENTS],
            n: v.len(),
        };
        e.free[..v.len()].copy_from_slice(v);
        e
    }

    #[test]
    fn extents_take_first_fit_and_coalesce_on_give() {
        let mut e = extents(&[(0, 100)]);
        assert_eq!(e.take(30), Some(0));
        assert_eq!(e.take(30), Some(30));
        assert_eq!(e.take(50), None);
        assert_eq!(e.take(40), Some(60));
        assert_eq!(e.n, 0);
        e.give(30, 30);
        assert_eq!(&e.free[..e.n], &[(30, 30)]);
        e.give(0, 30);
        assert_eq!(&e.free[..e.n], &[(0, 60)]);
        e.give(80, 20);
        assert_eq!(&e.free[..e.n], &[(0, 60), (80, 20)]);
        e.give(60, 20);
        assert_eq!(&e.free[..e.n], &[(0, 100)]);
        assert_eq!(e.take(100), Some(0));
    }
}
