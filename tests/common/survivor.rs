//! The "surviving session" the error tests start from: a session with the
//! golden cases (`cases`) and the tiny DiT (`keep`) loaded, which after the
//! error under test must still predict case 0 and still hold one model.
//! bad_input.rs, safety.rs and cancel.rs each set it up and checked it the
//! same way.

use super::golden::{predict_case, FORWARD_CASES, TINY_DIT};
use super::{as_f64, eval, run, session_with};
use std::path::Path;

/// Loads `cases` and `keep` into `s`.
pub fn load_survivor(s: &mut baton::host::Session) {
    run(
        s,
        &format!(
            r#"
            let cases = load_tensors("{FORWARD_CASES}");
            let keep = load_model("{TINY_DIT}", #{{ name: "keep" }});
            "#
        ),
    );
}

/// A session writing into `out` (no budget) with the survivor loaded.
pub fn survivor(out: &Path) -> baton::host::Session {
    let mut s = session_with(None, out);
    load_survivor(&mut s);
    s
}

/// The survivor still predicts case 0 within 1e-4 and `loaded_models()`
/// holds it alone.
pub fn assert_survivor_works(s: &mut baton::host::Session) {
    assert_survivor_works_counting(s, "loaded_models().len()");
}

/// [`assert_survivor_works`] counting the models with the Rhai expression
/// `models` (e.g. `vram().models.len()`, the ledger's count), which must be 1.
pub fn assert_survivor_works_counting(s: &mut baton::host::Session, models: &str) {
    let err = as_f64(eval(
        s,
        &format!(
            "rel_l2({}, cases.case0_out)",
            predict_case("keep", "cases", "case0")
        ),
    ));
    assert!(err < 1e-4, "the surviving model now gives rel L2 {err}");
    assert_eq!(as_f64(eval(s, models)), 1.0);
}
