//! The doc table cannot drift: every function the engine registers has an
//! entry, every entry names a registered function, each entry's options are
//! what the primitive accepts, and the README's reference is the current
//! rendering of the table.

use baton::host::docs::{self, DOCS};
use std::collections::BTreeSet;

/// Script-visible names registered on a session's engine, mapped to doc
/// names: getters `get$x` -> `x`, the indexer -> `[]`; `to_string`,
/// `to_debug` and `print` are display hooks, not primitives.
fn registered() -> BTreeSet<String> {
    let s = baton::host::Session::new(&Default::default());
    s.engine
        .gen_fn_signatures(false)
        .into_iter()
        .filter_map(|sig| {
            let name = sig.split('(').next().unwrap_or("").trim().to_string();
            let name = if name == "index$get$" {
                "[]".to_string()
            } else if let Some(g) = name.strip_prefix("get$") {
                format!("get${g}")
            } else {
                name
            };
            (!matches!(name.as_str(), "to_string" | "to_debug" | "print")).then_some(name)
        })
        .collect()
}

fn doc_matches(doc_name: &str, reg: &str) -> bool {
    match reg.strip_prefix("get$") {
        Some(g) => doc_name.split_once('.').map(|x| x.1) == Some(g),
        None => doc_name == reg,
    }
}

#[test]
fn every_registered_function_has_a_doc_entry_and_back() {
    let reg = registered();
    assert!(
        reg.contains("load_model") && reg.contains("get$shape"),
        "{reg:?}"
    );
    let undocumented: Vec<&String> = reg
        .iter()
        .filter(|r| !DOCS.iter().any(|d| doc_matches(d.name, r)))
        .collect();
    assert!(
        undocumented.is_empty(),
        "registered but not in src/host/docs.rs: {undocumented:?}"
    );
    let unregistered: Vec<&str> = DOCS
        .iter()
        .map(|d| d.name)
        .filter(|d| !reg.iter().any(|r| doc_matches(d, r)))
        .collect();
    assert!(
        unregistered.is_empty(),
        "documented but not registered: {unregistered:?}"
    );
}

/// An option the table lists is accepted and an unlisted one is refused,
/// naming the known keys from the table.
#[test]
fn option_keys_come_from_the_table() {
    let mut s = baton::host::Session::new(&Default::default());
    let e = s.eval("schedule(#{ stepz: 3 })", "t.rhai").unwrap_err();
    let keys = docs::option_keys("schedule").join(", ");
    assert!(
        e.contains("unknown option 'stepz'") && e.contains(&keys),
        "{e}"
    );
    let v = s
        .eval("schedule(#{ steps: 3, shift: 1.0 }).len()", "t.rhai")
        .unwrap();
    assert_eq!(v.as_int().unwrap(), 4);
}

#[test]
fn readme_reference_is_the_current_rendering() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find(docs::README_BEGIN)
        .expect("README has the BEGIN marker")
        + docs::README_BEGIN.len();
    let end = readme
        .find(docs::README_END)
        .expect("README has the END marker");
    assert_eq!(
        readme[start..end].trim(),
        docs::render_markdown().trim(),
        "README's primitive reference is stale: regenerate it with `baton help --markdown`"
    );
}

#[test]
fn help_prints_one_entry_and_unknown_names_fail() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["help", "sample"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with("sample(m, latent, opts)"), "{text}");
    assert!(
        text.contains("leftover_noise") && text.contains("example:"),
        "{text}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["help", "sampel"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no primitive 'sampel'"));
}
