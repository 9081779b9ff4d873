//! A seeded mutation fuzzer for the safetensors header and layout parsers
//! (`Header::read`, `detect`, and candle's reader behind `load_tensors`).
//! Stable Rust, no cargo-fuzz: `cargo run --release --example fuzz_header
//! -- SECONDS [SEED]`. Inputs that panic are saved under fuzz/crashes/.

#[path = "../fuzz/src/rng.rs"]
mod rng;

use rng::{mutate, Rng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

fn file(header: &str, data_len: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0x3fu8, data_len));
    b
}

fn seeds() -> Vec<Vec<u8>> {
    let mut s = vec![
        file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        ),
        file(
            r#"{"__metadata__":{"format":"pt"},"blocks.0.self_attn.q.weight":{"dtype":"BF16","shape":[4,4],"data_offsets":[0,32]},"patch_embedding.weight":{"dtype":"F16","shape":[2,2],"data_offsets":[32,40]}}"#,
            40,
        ),
        file(r#"{"x":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}"#, 1),
    ];
    let corpus = std::path::Path::new("fuzz/corpus/header");
    if let Ok(rd) = std::fs::read_dir(corpus) {
        for e in rd.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                s.push(b);
            }
        }
    }
    s
}

const DICT: &[&[u8]] = &[
    b"\"dtype\"",
    b"\"shape\"",
    b"\"data_offsets\"",
    b"\"F32\"",
    b"\"BF16\"",
    b"\"F8_E4M3\"",
    b"[0,0]",
    b"[]",
    b"{}",
    b"null",
    b"\"__metadata__\"",
    b",",
    b":",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"blocks.0.ffn.0.weight\"",
    b"\\u0000",
    b"-1",
];

fn main() {
    let (secs, seed) = rng::secs_and_seed();
    std::panic::set_hook(Box::new(|_| {}));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fuzz.safetensors");
    let seeds = seeds();
    let mut rng = Rng::new(seed);
    let (mut runs, mut ok, mut crashes) = (0u64, 0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let mut data = rng.pick(&seeds).clone();
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut data, DICT);
        }
        // Keep the length prefix honest half of the time so the JSON is reached.
        if rng.below(2) == 0 && data.len() >= 8 {
            let n = (data.len() as u64 - 8).min(u64::from_le_bytes(data[..8].try_into().unwrap()));
            data[..8].copy_from_slice(&n.to_le_bytes());
        }
        std::fs::write(&path, &data).expect("write");
        let r = catch_unwind(AssertUnwindSafe(|| {
            let h = baton::checkpoint::Header::read(&path);
            let parsed = h.is_ok();
            if let Ok(h) = h {
                let _ = baton::checkpoint::detect(&h, None);
                let _ = baton::checkpoint::finite::non_finite_tensors(&h);
            }
            let _ = candle_core::safetensors::load(&path, &candle_core::Device::Cpu);
            parsed
        }));
        runs += 1;
        match r {
            Ok(true) => ok += 1,
            Ok(false) => {}
            Err(p) => {
                crashes += 1;
                rng::record_crash(&format!("header-{seed}-{runs}.safetensors"), &data, p);
            }
        }
    }
    println!(
        "fuzz_header: {runs} executions in {secs}s (seed {seed}), {ok} parsed, {crashes} panics"
    );
    if crashes > 0 {
        std::process::exit(1);
    }
}
