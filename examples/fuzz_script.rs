//! A seeded mutation fuzzer for the script entry point: random and mutated
//! Rhai against a session with no models (empty model root, a temp out
//! dir), with tight limits. Nothing may panic; every error must come back
//! as a message. `cargo run --release --example fuzz_script -- SECONDS [SEED]`.

#[path = "../fuzz/src/rng.rs"]
mod rng;

use baton::host::limits::Limits;
use baton::host::{Session, SessionConfig};
use rng::{mutate, Rng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

const SEEDS: &[&str] = &[
    "let x = zeros([1, 16, 1, 4, 4]); let y = x + 1.0; y.shape",
    "let s = schedule(#{ scheduler: \"simple\", steps: 4, shift: 5.0 }); boundary_step(s, 0.875)",
    "let l = empty_latent(#{ width: 32, height: 32, frames: 5 }); l.narrow(2, 0, 1).shape",
    "let t = randn([2, 3], 7); t[0].to_list()",
    "vram()",
    "let m = load_model(\"nothing.safetensors\");",
    "save_tensors(#{ a: zeros([2]) }, \"a.safetensors\"); load_tensors(\"a.safetensors\")",
    "let v = zeros([1, 3, 1, 8, 8]); save_images(v, \"f_%04d.png\"); save_video(v, \"v.gif\", #{ fps: 8 })",
    "fn f(n) { if n == 0 { 0 } else { f(n - 1) + 1 } } f(10)",
    "let a = [1, 2, 3]; a.map(|x| x * 2).reduce(|s, x| s + x, 0)",
    "let t = zeros([4]); rel_l2(t, t + 1.0) + max_abs(t) + mean(t)",
    "sampler_state()",
    "let x = zeros([2, 2]); x.to_dtype(\"bf16\").dtype",
    "import \"stdlib/wan22\" as w;",
];

const DICT: &[&[u8]] = &[
    b"zeros([1,2])",
    b"randn([3], 1)",
    b"load_model(\"x\")",
    b"load_tensors(\"/etc/passwd\")",
    b"save_tensors(#{}, \"../x\")",
    b"load_image(\"..\")",
    b"sample(",
    b"predict(",
    b"narrow(",
    b"to_dtype(\"f16\")",
    b"[",
    b"]",
    b"(",
    b")",
    b"{",
    b"}",
    b"#{",
    b";",
    b",",
    b".",
    b"-1",
    b"0",
    b"1e308",
    b"9223372036854775807",
    b"\"",
    b"`${",
    b"fn f(x) { f(x) }",
    b"loop { }",
    b"while true {}",
    b"eval(\"1\")",
    b"delete_model(",
    b"offload_model(",
    b".shape",
    b"[-1]",
    b"[99]",
    b"empty_latent(#{ width: 0 })",
    b"schedule(#{ steps: 0 })",
    b"import \"../x\" as y;",
    b"to_list()",
    b"as",
    b"let ",
    b"this",
    b"Fn(\"f\")",
];

fn session(out: &std::path::Path) -> Session {
    Session::new(&SessionConfig {
        model_roots: vec![out.join("models")],
        out_dir: Some(out.join("out")),
        limits: Limits {
            max_operations: 20_000,
            max_array_size: 4096,
            max_string_size: 1 << 16,
            max_map_size: 1024,
            timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        },
        ..Default::default()
    })
}

fn main() {
    let (secs, seed) = rng::secs_and_seed();
    std::panic::set_hook(Box::new(|_| {}));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    let mut s = session(dir.path());
    let mut seeds: Vec<String> = SEEDS.iter().map(|s| s.to_string()).collect();
    // Past findings, kept as regression seeds.
    if let Ok(rd) = std::fs::read_dir("fuzz/corpus/script") {
        seeds.extend(
            rd.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok()),
        );
    }
    let mut rng = Rng::new(seed);
    let (mut runs, mut ok, mut crashes) = (0u64, 0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let mut code = rng.pick(&seeds).as_bytes().to_vec();
        for _ in 0..=rng.below(6) {
            mutate(&mut rng, &mut code, DICT);
        }
        let text = String::from_utf8_lossy(&code).into_owned();
        if std::env::var_os("FUZZ_TRACE").is_some() {
            std::fs::write("fuzz/last.rhai", &text).ok();
        }
        let r = catch_unwind(AssertUnwindSafe(|| s.eval(&text, "fuzz.rhai").is_ok()));
        runs += 1;
        match r {
            Ok(true) => ok += 1,
            Ok(false) => {}
            Err(p) => {
                crashes += 1;
                rng::record_crash(&format!("script-{seed}-{runs}.rhai"), text.as_bytes(), p);
                s = session(dir.path());
            }
        }
    }
    println!(
        "fuzz_script: {runs} executions in {secs}s (seed {seed}), {ok} succeeded, {crashes} panics"
    );
    if crashes > 0 {
        std::process::exit(1);
    }
}
