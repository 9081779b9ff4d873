//! Ctrl-C inside a long `sample`: the cancel flag (what the SIGINT handler
//! sets) stops it between steps or blocks, the error says so, and the
//! session keeps its variables and models. Its own test binary, because the
//! flag is process-wide.

mod common;

use common::eval_err;
use common::survivor::{assert_survivor_works, survivor};

#[test]
fn cancelling_a_long_sample_keeps_the_session() {
    let out = tempfile::tempdir().unwrap();
    let mut s = survivor(out.path());
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
    assert_survivor_works(&mut s);
}
