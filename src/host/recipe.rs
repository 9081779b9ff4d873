//! What a recipe says about itself, read without running it: its doc
//! comment (the leading `//!` lines) and its `param(name, default, help)`
//! declarations.
//!
//! `--help-recipe`, `baton recipes` and the `--set` check need this before
//! (or instead of) evaluation: running a recipe to learn its parameters would
//! load models. So declarations must use literal arguments, which is what
//! the convention asks; a scan of the text finds them.

/// One declared parameter, with its default as written in the script.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDecl {
    pub name: String,
    pub default: String,
    pub help: String,
}

/// Recipes compiled into the binary: `import "stdlib/wan22"` (or `"wan22"`)
/// always means baton's own copy, needs no file access (so it works under any
/// `--models`), and cannot be shadowed by a file a shared recipe brings along.
pub const BUNDLED: &[(&str, &str)] = &[("wan22", include_str!("../../stdlib/wan22.rhai"))];

/// The leading `//!` lines, without the markers.
pub fn doc_comment(code: &str) -> String {
    code.lines()
        .map(str::trim_start)
        .take_while(|l| l.starts_with("//!") || l.is_empty())
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// Every `param("name", literal, "help")` call outside strings and comments.
/// A call whose arguments are not literals is an error naming its line.
pub fn scan_params(code: &str) -> Result<Vec<ParamDecl>, String> {
    let b = code.as_bytes();
    let mut out: Vec<ParamDecl> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' | b'`' | b'\'' => i = skip_string(b, i),
            b'p' if code[i..].starts_with("param")
                && (i == 0 || !is_ident(b[i - 1]))
                && !b.get(i + 5).is_some_and(|c| is_ident(*c)) =>
            {
                let mut j = skip_ws(b, i + 5);
                if b.get(j) != Some(&b'(') {
                    i += 5;
                    continue;
                }
                let line = code[..i].matches('\n').count() + 1;
                let bad = || {
                    format!(
                        "line {line}: param(...) must be written with literal arguments: param(\"name\", default, \"help\")"
                    )
                };
                j += 1;
                let (name, j) = string_lit(code, skip_ws(b, j)).ok_or_else(bad)?;
                let j = comma(b, j).ok_or_else(bad)?;
                let (default, j) = literal(code, j).ok_or_else(bad)?;
                let j = comma(b, j).ok_or_else(bad)?;
                let (help, j) = string_lit(code, j).ok_or_else(bad)?;
                let j = skip_ws(b, j);
                if b.get(j) != Some(&b')') {
                    return Err(bad());
                }
                if out.iter().any(|p| p.name == name) {
                    return Err(format!("line {line}: param '{name}' is declared twice"));
                }
                out.push(ParamDecl {
                    name,
                    default,
                    help,
                });
                i = j + 1;
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

fn comma(b: &[u8], i: usize) -> Option<usize> {
    let i = skip_ws(b, i);
    (b.get(i) == Some(&b',')).then(|| skip_ws(b, i + 1))
}

/// Index just past the string literal starting at `i`.
fn skip_string(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() && b[j] != q {
        if b[j] == b'\\' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// A `"..."` literal's value (escapes \" \\ \n \t) and the index after it.
fn string_lit(code: &str, i: usize) -> Option<(String, usize)> {
    let b = code.as_bytes();
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let end = skip_string(b, i);
    let raw = code.get(i + 1..end.checked_sub(1)?)?;
    let mut s = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                'n' => s.push('\n'),
                't' => s.push('\t'),
                other => s.push(other),
            }
        } else {
            s.push(c);
        }
    }
    Some((s, end))
}

/// A string, number or bool literal, as written (strings re-quoted).
fn literal(code: &str, i: usize) -> Option<(String, usize)> {
    let b = code.as_bytes();
    if b.get(i) == Some(&b'"') {
        let (s, j) = string_lit(code, i)?;
        return Some((format!("{s:?}"), j));
    }
    let mut j = i;
    while b
        .get(j)
        .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'_'))
    {
        j += 1;
    }
    let text = &code[i..j];
    let ok = text == "true" || text == "false" || text.replace('_', "").parse::<f64>().is_ok();
    ok.then(|| (text.to_string(), j))
}

/// `--help-recipe`'s text.
pub fn render_help(file: &str, code: &str) -> Result<String, String> {
    let params = scan_params(code).map_err(|e| format!("{file}: {e}"))?;
    let mut s = String::new();
    let doc = doc_comment(code);
    if !doc.is_empty() {
        s.push_str(&doc);
        s.push_str("\n\n");
    }
    if params.is_empty() {
        s.push_str(&format!("{file} declares no parameters.\n"));
        return Ok(s);
    }
    s.push_str(&format!(
        "parameters of {file} (set with --set NAME=VALUE):\n"
    ));
    let w = params.iter().map(|p| p.name.len()).max().unwrap_or(0);
    let dw = params.iter().map(|p| p.default.len()).max().unwrap_or(0);
    for p in &params {
        s.push_str(&format!(
            "  {:<w$}  {:<dw$}  {}\n",
            p.name, p.default, p.help
        ));
    }
    Ok(s)
}

/// Fails when `--set` names a parameter the script does not declare.
pub fn check_set_names<'a>(
    file: &str,
    code: &str,
    set: impl Iterator<Item = &'a str>,
) -> Result<(), String> {
    let declared = scan_params(code).map_err(|e| format!("{file}: {e}"))?;
    for name in set {
        if !declared.iter().any(|p| p.name == name) {
            let names: Vec<&str> = declared.iter().map(|p| p.name.as_str()).collect();
            return Err(format!(
                "--set {name}: {file} declares no parameter '{name}' (declared: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
    }
    Ok(())
}

/// `baton recipes`: each recipe bundled in the binary with its doc comment.
pub fn bundled_text() -> String {
    let mut s =
        String::from("bundled recipes (import \"NAME\" as x; or import \"stdlib/NAME\" as x;):\n");
    for (name, code) in BUNDLED {
        s.push_str(&format!("\n{name}\n"));
        for line in doc_comment(code).lines() {
            s.push_str(format!("  {line}").trim_end());
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = r#"//! Two-expert Wan 2.2 text-to-video.
//! Second line.
let steps  = param("steps", 20, "Total sampling steps");
// param("commented", 1, "not a declaration")
let s = "param(\"in_string\", 1, \"no\")";
let prompt = param("prompt", "a \"red\" fox", "Positive prompt");
let cfg = param( "cfg" , -3.5 ,
    "Classifier-free guidance scale" );
let go = param("go", true, "Whether to go");
my_param(1);
"#;

    #[test]
    fn finds_literal_declarations_only() {
        let p = scan_params(SCRIPT).unwrap();
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["steps", "prompt", "cfg", "go"]);
        assert_eq!(p[1].default, "\"a \\\"red\\\" fox\"");
        assert_eq!(p[2].default, "-3.5");
        assert_eq!(p[2].help, "Classifier-free guidance scale");
        assert_eq!(
            doc_comment(SCRIPT),
            "Two-expert Wan 2.2 text-to-video.\nSecond line."
        );
    }

    #[test]
    fn non_literal_arguments_and_unknown_sets_are_errors() {
        let e = scan_params("let a = 1;\nlet x = param(\"x\", a, \"h\");").unwrap_err();
        assert!(e.contains("line 2") && e.contains("literal"), "{e}");
        let e = check_set_names("r.rhai", SCRIPT, ["stepz"].into_iter()).unwrap_err();
        assert!(
            e.contains("stepz") && e.contains("steps, prompt, cfg, go"),
            "{e}"
        );
        assert!(check_set_names("r.rhai", SCRIPT, ["cfg"].into_iter()).is_ok());
    }
}
