//! The binary's allocator (`checkpoint::mapped::Allocator`) starts every
//! block of `LINE_FROM` bytes or more on a 64-byte cache line, whatever the
//! element type, and keeps a block's contents when it grows or shrinks
//! across that size (its alignment differs on the two sides).

use baton::checkpoint::mapped::{Allocator, LINE_FROM};
use half::bf16;

#[global_allocator]
static ALLOC: Allocator = Allocator;

fn line(p: *const u8) -> usize {
    p as usize % 64
}

#[test]
fn large_blocks_start_on_a_cache_line() {
    for bytes in [LINE_FROM, LINE_FROM + 2, 1 << 20, (3 << 20) + 6, 64 << 20] {
        // Many blocks each, so an allocator that aligns by chance fails.
        let bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![1u8; bytes]).collect();
        for b in &bufs {
            assert_eq!(line(b.as_ptr()), 0, "{bytes} bytes of u8");
        }
        let halves: Vec<Vec<bf16>> = (0..8).map(|_| vec![bf16::ONE; bytes / 2]).collect();
        for h in &halves {
            assert_eq!(line(h.as_ptr().cast()), 0, "{} bf16", bytes / 2);
        }
        let zeros: Vec<Vec<f32>> = (0..8).map(|_| vec![0f32; bytes / 4]).collect();
        for z in &zeros {
            assert_eq!(line(z.as_ptr().cast()), 0, "{} zeroed f32", bytes / 4);
            assert!(z.iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn blocks_keep_their_contents_across_the_line_size() {
    // Grows from below LINE_FROM to far above it one push at a time
    // (realloc on both sides of the size and across it), then shrinks back.
    let mut v: Vec<u32> = Vec::new();
    let n = 4 * LINE_FROM;
    for i in 0..n as u32 {
        v.push(i.wrapping_mul(2654435761));
        if v.capacity() * 4 >= LINE_FROM {
            assert_eq!(line(v.as_ptr().cast()), 0, "capacity {}", v.capacity());
        }
    }
    v.truncate(100);
    v.shrink_to_fit();
    for (i, &x) in v.iter().enumerate() {
        assert_eq!(x, (i as u32).wrapping_mul(2654435761));
    }
    let mut w: Vec<u8> = vec![7u8; LINE_FROM - 1];
    w.reserve_exact(LINE_FROM);
    assert_eq!(line(w.as_ptr()), 0);
    assert!(w.iter().all(|&b| b == 7));
}
