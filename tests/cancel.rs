//! Ctrl-C inside a long `sample`: the cancel flag (what the SIGINT handler
//! sets) stops it between steps or blocks, the error says so, and the
//! session keeps its variables and models. Its own test binary, because the
//! flag is process-wide.

mod common;

use common::{as_f64, eval, eval_err, run, session_with};

#[test]
fn cancelling_a_long_sample_keeps_the_session() {
    let out = tempfile::tempdir().unwrap();
    let mut s = session_with(None, out.path());
    run(
        &mut s,
        r#"
        let cases = load_tensors("tests/fixtures/wan_tiny/forward_cases.safetensors");
        let keep = load_model("tests/fixtures/wan_tiny/original.safetensors", #{ name: "keep" });
        "#,
    );
    let setter = std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_millis(400));
        baton::runtime::cancel::request_cancel();
    });
    let t = std::time::Instant::now();
    let e = eval_err(
        &mut s,
        "let x = sample(keep, cases.case0_x, #{ positive: cases.case0_context, steps: 10000, cfg: 1 });",
    );
    setter.join().unwrap();
    assert!(t.elapsed().as_secs() < 30, "took {:?}", t.elapsed());
    assert!(
        e.contains("cancelled (Ctrl-C)") && (e.contains("of 10000") || e.contains("in block")),
        "{e}"
    );
    assert_eq!(s.last_stop, Some(baton::runtime::cancel::Stop::Cancelled));
    // The next evaluation starts with the flag cleared; the model is intact.
    let err = as_f64(eval(
        &mut s,
        "rel_l2(predict(keep, cases.case0_x, cases.case0_t, cases.case0_context), cases.case0_out)",
    ));
    assert!(err < 1e-4, "{err}");
    assert_eq!(as_f64(eval(&mut s, "loaded_models().len()")), 1.0);
}
