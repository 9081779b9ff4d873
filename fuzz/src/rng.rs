//! A seeded xorshift generator and byte mutations for the stable-Rust
//! fuzzers (cargo-fuzz needs nightly). Shared by the fuzz examples.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Interesting integers: boundaries and overflow bait.
pub const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "7",
    "8",
    "255",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "-0",
    "1.5",
    "NaN",
];

/// One random mutation of `data` (bytes or script text alike).
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, dict: &[&[u8]]) {
    let len = data.len();
    match rng.below(8) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next() as u8;
        }
        2 if len > 0 => {
            let i = rng.below(len);
            let n = rng.below(16.min(len - i) + 1);
            data.drain(i..i + n);
        }
        3 => {
            let i = rng.below(len + 1);
            let word = rng.pick(dict);
            data.splice(i..i, word.iter().copied());
        }
        4 if len > 0 => {
            data.truncate(rng.below(len));
        }
        5 if len > 1 => {
            // Duplicate a slice (nesting, repeated keys).
            let i = rng.below(len);
            let n = rng.below(64.min(len - i)) + 1;
            let chunk: Vec<u8> = data[i..i + n].to_vec();
            let j = rng.below(len + 1);
            data.splice(j..j, chunk);
        }
        6 => {
            // Replace a run of digits with an interesting number.
            let digits: Vec<usize> = (0..len).filter(|&i| data[i].is_ascii_digit()).collect();
            if let Some(&i) = digits.get(rng.below(digits.len().max(1))) {
                let mut j = i;
                while j < len && data[j].is_ascii_digit() {
                    j += 1;
                }
                let n = rng.pick(NUMBERS).as_bytes().to_vec();
                data.splice(i..j, n);
            }
        }
        _ => {
            let i = rng.below(len + 1);
            data.insert(i, rng.next() as u8);
        }
    }
}

/// Saves an input that made the target panic under `fuzz/crashes/` and prints
/// the panic message, so the crash can be replayed and added to the corpus.
pub fn record_crash(name: &str, data: &[u8], payload: Box<dyn std::any::Any + Send>) {
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    std::fs::create_dir_all("fuzz/crashes").ok();
    let out = format!("fuzz/crashes/{name}");
    std::fs::write(&out, data).ok();
    eprintln!("PANIC on {out}: {msg}");
}

/// The fuzzers' command line: `SECONDS [SEED]` (defaults 60 and 1).
pub fn secs_and_seed() -> (u64, u64) {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    (arg(1, 60), arg(2, 1))
}
