//! The jobs file: JSON Lines (one object of recipe parameters per line, with
//! an optional `id`) or CSV (a header row of parameter names, `id` among
//! them if wanted). Every value is checked against the recipe's declared
//! parameters before anything loads; an error names `file:line`.
//!
//! Items are numbered in file order (blank lines and the CSV header are not
//! items): item k belongs to shard k mod N. An item without an `id` is
//! called by its number, `00007`.

use crate::host::params_text::{parse_as, Kind, Typed};
use crate::host::recipe::ParamDecl;
use serde_json::Value;
use std::path::Path;

/// One job: the recipe parameters it sets, as `--set` text and as typed JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Position among the items (0-based): decides the shard.
    pub index: usize,
    /// 1-based line of the jobs file, for messages.
    pub line: usize,
    pub id: String,
    /// `NAME=VALUE` pairs in the form `--set` takes, `--set` values first
    /// then the item's own (which win).
    pub set: Vec<(String, String)>,
}

/// The type a parameter's default literal has (`"..."`, `true`, `8`, `0.5`).
pub fn kind_of(default: &str) -> Kind {
    let d = default.trim();
    if d.starts_with('"') || d.starts_with('`') || d.starts_with('\'') {
        Kind::Str
    } else if d == "true" || d == "false" {
        Kind::Bool
    } else if d.replace('_', "").parse::<i64>().is_ok() {
        Kind::Int
    } else {
        Kind::Float
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Int => "an integer",
        Kind::Float => "a number",
        Kind::Bool => "true or false",
        Kind::Str => "a string",
    }
}

/// A valid item id: a plain directory name.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!("id '{id}' must have 1 to 128 characters"));
    }
    if id == "batch.json" {
        return Err("id 'batch.json' is the batch's own file".into());
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Err(format!("id '{id}' must not start with '.' or '-'"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "id '{id}' has '{c}': ids are directory names (letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// Checks `--set` pairs against the recipe: each names a declared parameter
/// and parses as its type.
pub fn check_set(set: &[(String, String)], decls: &[ParamDecl]) -> Result<(), String> {
    for (name, text) in set {
        let d = decl(decls, name).map_err(|e| format!("--set {name}: {e}"))?;
        let k = kind_of(&d.default);
        parse_as(text, k).map_err(|want| format!("--set {name}={text} is not {want}"))?;
    }
    Ok(())
}

fn decl<'a>(decls: &'a [ParamDecl], name: &str) -> Result<&'a ParamDecl, String> {
    decls.iter().find(|d| d.name == name).ok_or_else(|| {
        let names: Vec<&str> = decls.iter().map(|d| d.name.as_str()).collect();
        format!(
            "unknown parameter '{name}' (the recipe declares: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )
    })
}

/// Reads and checks the jobs file. `set` (the command line's `--set`) comes
/// before each item's own values.
pub fn read(
    path: &Path,
    decls: &[ParamDecl],
    set: &[(String, String)],
) -> Result<Vec<Item>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read jobs file {}: {e}", path.display()))?;
    let shown = path.display().to_string();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let csv = match ext.as_str() {
        "csv" => true,
        "jsonl" | "ndjson" | "json" => false,
        _ => !text.trim_start().starts_with('{'),
    };
    let items = if csv {
        read_csv(&shown, &text, decls)?
    } else {
        read_jsonl(&shown, &text, decls)?
    };
    let mut seen: std::collections::HashMap<&str, usize> = Default::default();
    for it in &items {
        if let Some(first) = seen.insert(&it.id, it.line) {
            return Err(format!(
                "{shown}:{}: duplicate id '{}' (first on line {first})",
                it.line, it.id
            ));
        }
    }
    if items.is_empty() {
        return Err(format!("{shown}: no jobs in the file"));
    }
    Ok(items
        .into_iter()
        .map(|mut it| {
            let mut all = set.to_vec();
            all.retain(|(n, _)| !it.set.iter().any(|(m, _)| m == n));
            all.append(&mut it.set);
            it.set = all;
            it
        })
        .collect())
}

fn read_jsonl(shown: &str, text: &str, decls: &[ParamDecl]) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let at = |e: String| format!("{shown}:{line}: {e}");
        let v: Value =
            serde_json::from_str(raw).map_err(|e| at(format!("not a JSON object: {e}")))?;
        let Value::Object(obj) = v else {
            return Err(at("each line must be a JSON object of parameters".into()));
        };
        let index = items.len();
        let mut id = format!("{index:05}");
        let mut set = Vec::new();
        for (name, value) in &obj {
            if name == "id" {
                id = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) if n.is_u64() => n.to_string(),
                    other => return Err(at(format!("id must be a string, got {other}"))),
                };
                check_id(&id).map_err(at)?;
                continue;
            }
            let d = decl(decls, name).map_err(at)?;
            let k = kind_of(&d.default);
            let text = match (k, value) {
                (Kind::Int, Value::Number(n)) if n.is_i64() => n.to_string(),
                (Kind::Float, Value::Number(n)) => n
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.to_string())
                    .ok_or_else(|| at(format!("'{name}' must be a finite number")))?,
                (Kind::Bool, Value::Bool(b)) => b.to_string(),
                (Kind::Str, Value::String(s)) => s.clone(),
                (k, v) => {
                    return Err(at(format!(
                        "'{name}' must be {} (its default is {}), got {v}",
                        kind_name(k),
                        d.default
                    )))
                }
            };
            set.push((name.clone(), text));
        }
        items.push(Item {
            index,
            line,
            id,
            set,
        });
    }
    Ok(items)
}

fn read_csv(shown: &str, text: &str, decls: &[ParamDecl]) -> Result<Vec<Item>, String> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::Headers)
        .from_reader(text.as_bytes());
    let headers = r
        .headers()
        .map_err(|e| format!("{shown}:1: bad CSV header: {e}"))?
        .clone();
    let mut kinds = Vec::new();
    for (col, name) in headers.iter().enumerate() {
        if headers.iter().take(col).any(|h| h == name) {
            return Err(format!("{shown}:1: column '{name}' appears twice"));
        }
        if name == "id" {
            kinds.push(None);
        } else {
            let d = decl(decls, name).map_err(|e| format!("{shown}:1: {e}"))?;
            kinds.push(Some(kind_of(&d.default)));
        }
    }
    let mut items = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            format!("{shown}:{line}: bad CSV: {e}")
        })?;
        let line = rec.position().map_or(0, |p| p.line()) as usize;
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let index = items.len();
        let mut id = format!("{index:05}");
        let mut set = Vec::new();
        for ((name, kind), value) in headers.iter().zip(&kinds).zip(rec.iter()) {
            let at = |e: String| format!("{shown}:{line}: {e}");
            match kind {
                None => {
                    if !value.trim().is_empty() {
                        id = value.trim().to_string();
                        check_id(&id).map_err(at)?;
                    }
                }
                // An empty cell leaves the parameter at its default.
                Some(_) if value.trim().is_empty() => {}
                Some(k) => {
                    let typed = parse_as(value, *k)
                        .map_err(|want| at(format!("'{name}' must be {want}, got '{value}'")))?;
                    let text = match typed {
                        Typed::Int(i) => i.to_string(),
                        Typed::Float(f) => f.to_string(),
                        Typed::Bool(b) => b.to_string(),
                        Typed::Str(s) => s,
                    };
                    set.push((name.to_string(), text));
                }
            }
        }
        items.push(Item {
            index,
            line,
            id,
            set,
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decls() -> Vec<ParamDecl> {
        crate::host::recipe::scan_params(
            r#"let a = param("prompt", "x", "p"); let b = param("seed", 42, "s");
               let c = param("cfg", 3.5, "c"); let d = param("fast", false, "f");"#,
        )
        .unwrap()
    }

    fn read_text(name: &str, text: &str) -> Result<Vec<Item>, String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        read(&p, &decls(), &[("cfg".into(), "2".into())])
            .map_err(|e| e.replace(&d.path().display().to_string(), ""))
    }

    #[test]
    fn jsonl_items_are_typed_and_numbered() {
        let items = read_text(
            "j.jsonl",
            "{\"id\":\"a\",\"prompt\":\"a cat\",\"seed\":7}\n\n{\"cfg\":4.5,\"fast\":true}\n",
        )
        .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].id.as_str(), items[0].line), ("a", 1));
        assert_eq!(
            (items[1].id.as_str(), items[1].line, items[1].index),
            ("00001", 3, 1)
        );
        assert!(items[0].set.contains(&("seed".into(), "7".into())));
        assert!(items[0].set.contains(&("cfg".into(), "2".into())));
        assert!(items[1].set.contains(&("cfg".into(), "4.5".into())));
        assert!(!items[1].set.contains(&("cfg".into(), "2".into())));
    }

    #[test]
    fn csv_items_use_the_typed_value_parser() {
        let items = read_text("j.csv", "id,prompt,seed\nx,\"a cat, sleeping\",3\ny,,4\n").unwrap();
        assert_eq!(items[0].id, "x");
        assert!(items[0]
            .set
            .contains(&("prompt".into(), "a cat, sleeping".into())));
        assert!(!items[1].set.iter().any(|(n, _)| n == "prompt"));
        assert_eq!(items[1].line, 3);
    }

    #[test]
    fn bad_files_name_the_line() {
        let e = read_text("j.jsonl", "{\"seed\":1}\n{\"seed\":\n").unwrap_err();
        assert!(e.contains("j.jsonl:2:") && e.contains("JSON"), "{e}");
        let e = read_text("j.jsonl", "{\"seed\":1}\n{\"sede\":2}\n").unwrap_err();
        assert!(
            e.contains("j.jsonl:2:") && e.contains("unknown parameter 'sede'"),
            "{e}"
        );
        let e = read_text("j.jsonl", "{\"seed\":1.5}\n").unwrap_err();
        assert!(
            e.contains("j.jsonl:1:") && e.contains("'seed' must be an integer"),
            "{e}"
        );
        let e = read_text("j.jsonl", "{\"id\":\"a\"}\n{\"id\":\"a\"}\n").unwrap_err();
        assert!(
            e.contains("j.jsonl:2:") && e.contains("duplicate id 'a'") && e.contains("line 1"),
            "{e}"
        );
        let e = read_text("j.jsonl", "{\"id\":\"../x\"}\n").unwrap_err();
        assert!(e.contains("j.jsonl:1:") && e.contains("id"), "{e}");
        let e = read_text("j.csv", "seed,fast\n1,yes\n").unwrap_err();
        assert!(
            e.contains("j.csv:2:") && e.contains("'fast' must be true or false"),
            "{e}"
        );
        let e = read_text("j.csv", "seed,colour\n1,red\n").unwrap_err();
        assert!(
            e.contains("j.csv:1:") && e.contains("unknown parameter 'colour'"),
            "{e}"
        );
        assert!(check_set(&[("seed".into(), "x".into())], &decls()).is_err());
        assert!(check_set(&[("nope".into(), "1".into())], &decls()).is_err());
    }
}
