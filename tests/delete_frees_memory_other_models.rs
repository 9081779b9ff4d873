//! The text encoder and the VAE obey the same memory rules as the experts:
//! the ledger counts what their load really adds to RSS, and `delete_model`
//! gives it back. One test per binary: RSS is a process-wide measurement.

mod common;

use baton::runtime::builtin;
use common::rss::{assert_rss_back, assert_rss_grew_by, rss, tolerance, MIB};
use common::{as_f64, eval, run, session_with};

#[test]
fn text_encoder_and_vae_ledger_matches_rss_and_delete_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let te = dir.path().join("umt5.safetensors");
    let vae = dir.path().join("vae.safetensors");
    builtin::write("umt5-tiny", 3, &te).unwrap();
    builtin::write("wan-vae-tiny", 4, &vae).unwrap();
    let mut s = session_with(None, dir.path());
    let (te, vae) = (te.display().to_string(), vae.display().to_string());
    // Warm up allocator pools and compute scratch with the same work as below.
    let use_them = |name: &str| {
        format!(
            r#"
            let te = load_model("{te}", #{{ name: "te_{name}" }});
            let n = encode_text(te, "a red fox in the snow").shape[1];
            let vae = load_model("{vae}", #{{ name: "vae_{name}" }});
            let f = decode(vae, zeros([1, 16, 2, 8, 8])).shape[2];
            "#
        )
    };
    run(&mut s, &use_them("warm"));
    run(&mut s, "delete_model(te); delete_model(vae);");

    let before = rss();
    run(&mut s, &use_them("measured"));
    let grew = rss() - before;
    let ledger = as_f64(eval(&mut s, "vram().used"));
    println!(
        "ledger {:.1} MiB (umT5 + VAE); RSS grew {:.1} MiB",
        ledger / MIB,
        grew / MIB
    );
    // The same allowance as the experts' test: max(8 MiB, 5% of the models).
    let tol = tolerance(ledger);
    assert!(ledger > 50.0 * MIB, "both models are in the ledger");
    assert_rss_grew_by(grew, ledger, tol, "the ledger counts");
    run(&mut s, "delete_model(te); delete_model(vae);");
    assert_eq!(as_f64(eval(&mut s, "vram().used")), 0.0);
    let after = rss();
    println!(
        "RSS before {:.1} MiB, after delete {:.1} MiB",
        before / MIB,
        after / MIB
    );
    assert_rss_back(after, before, tol, "delete");
}
