//! A GGUF DiT's memory: after `load_model` the ledger holds the file's
//! tensor bytes and RSS grows by that much; `delete_model` brings RSS back.
//! One test per binary: RSS is a process-wide measurement.
mod common;

use baton::checkpoint::{gguf_write::quantize_wan, Header};
use baton::runtime::builtin::{tiny_config, write_tiny};
use candle_core::quantized::GgmlDType;
use common::rss::{assert_rss_back, assert_rss_grew_by, rss, MIB};
use common::{as_f64, eval, run, session_with};

#[test]
fn q8_0_gguf_ledger_is_the_file_bytes_and_rss_follows() {
    let dir = tempfile::tempdir().unwrap();
    let f32_file = dir.path().join("expert.safetensors");
    write_tiny(&f32_file, &tiny_config(), 7, "test-expert").unwrap();
    let path = dir.path().join("expert_Q8_0.gguf");
    quantize_wan(&f32_file, &path, GgmlDType::Q8_0).unwrap();
    let file_bytes = Header::read(&path).unwrap().total_bytes() as f64;
    let mut s = session_with(None, dir.path());
    let p = path.display().to_string();
    // Warm-up: the same load, forwards and delete, so the baseline holds
    // the allocator pools and compute scratch that are not the model.
    let warm = format!(
        r#"
        let ctx = randn([1, 16, 4096], 1);
        let x = randn([1, 16, 1, 16, 16], 2);
        let m = load_model("{p}");
        for i in 0..3 {{ predict(m, x, 500.0, ctx); }}
        delete_model(m);
        "#
    );
    run(&mut s, &warm);
    let before = rss();
    run(
        &mut s,
        &format!(r#"let m = load_model("{p}"); let v = predict(m, x, 500.0, ctx);"#),
    );
    let grew = rss() - before;
    let ledger = as_f64(eval(&mut s, "vram().used"));
    println!(
        "Q8_0 GGUF: file tensor bytes {:.2} MiB, ledger {:.2} MiB, RSS grew {:.2} MiB",
        file_bytes / MIB,
        ledger / MIB,
        grew / MIB
    );
    assert_eq!(ledger, file_bytes);
    let tol = 0.05 * ledger;
    assert_rss_grew_by(grew, ledger, tol, "the GGUF model holds");
    run(&mut s, "delete_model(m);");
    let after = rss();
    println!(
        "RSS before load {:.1} MiB, after delete {:.1} MiB",
        before / MIB,
        after / MIB
    );
    assert_rss_back(after, before, tol, "deleting the GGUF model");
}
