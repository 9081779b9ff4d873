//! delete_model gives memory back: the ledger drops the model at once, and the
//! process RSS (read from /proc) returns to where it was before the load.
//! The ledger's resident bytes also match what the load really added to RSS.
//!
//! One test per binary: RSS is a process-wide measurement.

mod common;

use baton::runtime::builtin::{tiny_config, write_tiny};
use common::rss::{assert_rss_back, assert_rss_grew_by, rss, tolerance, MIB};
use common::{as_f64, eval, run, session_with};

#[test]
fn delete_returns_rss_and_the_ledger_matches_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("expert.safetensors");
    write_tiny(&path, &tiny_config(), 7, "test-expert").unwrap();
    let model_bytes = std::fs::metadata(&path).unwrap().len() as f64;

    let mut s = session_with(None, dir.path());
    let p = path.display().to_string();
    // Warm up allocator pools and the compute threads' scratch buffers with the
    // same loads and forwards as below, so the baseline already contains
    // everything that is not the model.
    let warm = format!(
        r#"
        let ctx = randn([1, 16, 4096], 1);
        let x = randn([1, 16, 1, 16, 16], 2);
        for budget in ["1GiB", "80MiB"] {{
            vram_budget(budget);
            let m = load_model("{p}");
            for i in 0..3 {{ predict(m, x, 500.0, ctx); }}
            delete_model(m);
        }}
        vram_budget("1GiB");
        "#
    );
    run(&mut s, &warm);

    // Full load.
    let before = rss();
    run(
        &mut s,
        &format!(
            r#"let m = load_model("{p}", #{{ name: "full" }}); let v = predict(m, x, 500.0, ctx);"#
        ),
    );
    let loaded = rss();
    let ledger = as_f64(eval(&mut s, "vram().used"));
    let grew = loaded - before;
    println!(
        "model {:.1} MiB; ledger {:.1} MiB; RSS grew {:.1} MiB",
        model_bytes / MIB,
        ledger / MIB,
        grew / MIB
    );
    let tol = tolerance(model_bytes);
    assert_rss_grew_by(grew, ledger, tol, "the ledger counts");

    run(&mut s, "delete_model(m);");
    assert_eq!(as_f64(eval(&mut s, "vram().used")), 0.0);
    assert_eq!(as_f64(eval(&mut s, "vram().models.len()")), 0.0);
    let after = rss();
    println!(
        "RSS before load {:.1} MiB, after delete {:.1} MiB",
        before / MIB,
        after / MIB
    );
    assert_rss_back(after, before, tol, "delete");

    // Partial load under a budget: only the resident part costs RSS, also
    // after forwards that streamed every other block through the buffer.
    let before = rss();
    run(
        &mut s,
        &format!(
            r#"
            vram_budget("80MiB");
            let m = load_model("{p}", #{{ name: "partial" }});
            let v = predict(m, x, 500.0, ctx);
            v = predict(m, x, 500.0, ctx);
            "#
        ),
    );
    let offloaded = as_f64(eval(&mut s, "m.offloaded_bytes"));
    let weights = as_f64(eval(&mut s, "m.bytes - m.offloaded_bytes"));
    assert!(
        offloaded > 0.0,
        "an 80 MiB budget must offload part of a {:.0} MiB model",
        model_bytes / MIB
    );
    let grew = rss() - before;
    println!(
        "partial: {:.1} MiB weights resident, {:.1} MiB offloaded; RSS grew {:.1} MiB",
        weights / MIB,
        offloaded / MIB,
        grew / MIB
    );
    assert_rss_grew_by(grew, weights, tol, "the partial model holds");
    run(&mut s, "delete_model(m);");
    assert_rss_back(rss(), before, tol, "deleting the partial model");
}
