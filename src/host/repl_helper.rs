//! The REPL's editing help: Tab completion, the signature hint and colours.
//!
//! Completion knows what the user is typing: inside a string it completes
//! file names under the model roots (and `builtin:` models); inside a
//! `#{ ... }` passed to a primitive it completes that primitive's option
//! keys from the doc table; after a `.` at the line start, the dot-commands;
//! elsewhere primitives, script variables and functions. The hint shows the
//! signature of the primitive whose call the cursor is in.

use super::docs;
use crate::roots::ModelRoots;
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};
use std::borrow::Cow;
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

/// The REPL's dot-commands, with their one-line help.
pub const DOT_COMMANDS: &[(&str, &str)] = &[
    (".help", "[name]  primitives, or one primitive's signature, options and example"),
    (".vram", "the ledger: budget, used, free, each loaded model"),
    (".models", "loaded models, then the model files available under the model roots"),
    (".load", "FILE  run a script into this session (its variables and models stay)"),
    (".plan", "this session's memory timeline so far: each load, sample and delete with the ledger after it"),
    (".history", "the input history"),
    (".clear", "clear the screen"),
    (".quit", "leave (also Ctrl-D)"),
];

/// What completion needs from the session, refreshed after each entry.
#[derive(Default)]
pub struct Known {
    pub variables: Vec<String>,
    pub functions: Vec<String>,
    pub model_roots: ModelRoots,
}

pub struct ReplHelper {
    pub known: Rc<RefCell<Known>>,
    pub color: bool,
}

impl Helper for ReplHelper {}
impl Validator for ReplHelper {}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Lexical state at the end of `text`: an open string's start, and the
/// stack of open brackets (their byte positions).
struct Lex {
    string_start: Option<usize>,
    open: Vec<(char, usize)>,
}

fn lex(text: &str) -> Lex {
    let mut l = Lex {
        string_start: None,
        open: Vec::new(),
    };
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
                l.string_start = None;
            }
            continue;
        }
        match c {
            '"' | '`' | '\'' => {
                quote = Some(c);
                l.string_start = Some(i);
            }
            '/' if it.peek().map(|x| x.1) == Some('/') => {
                for (_, c) in it.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => l.open.push((c, i)),
            ')' | ']' | '}' => {
                l.open.pop();
            }
            _ => {}
        }
    }
    l
}

/// The identifier just before byte `at` (skipping spaces), e.g. the
/// function whose `(` is at `at`.
fn ident_before(text: &str, at: usize) -> Option<&str> {
    let head = text[..at].trim_end();
    let start = head
        .char_indices()
        .rev()
        .take_while(|(_, c)| is_ident(*c))
        .last()
        .map(|(i, _)| i)?;
    Some(&head[start..])
}

/// The primitive whose argument list the cursor is in, and whether the
/// cursor is directly inside a `#{` options map given to it.
fn enclosing_call(text: &str, lx: &Lex) -> (Option<String>, bool) {
    let mut in_map = false;
    for (k, &(c, i)) in lx.open.iter().enumerate().rev() {
        match c {
            '{' if k + 1 == lx.open.len() && i > 0 && text.as_bytes()[i - 1] == b'#' => {
                in_map = true
            }
            '(' => {
                let name = ident_before(text, i).map(str::to_string);
                return (name, in_map);
            }
            _ => {}
        }
    }
    (None, false)
}

impl ReplHelper {
    fn complete_path(&self, prefix: &str) -> Vec<Pair> {
        let mut out = Vec::new();
        for full in ModelRoots::builtin_names() {
            if full.starts_with(prefix) {
                out.push(Pair {
                    display: full.clone(),
                    replacement: full,
                });
            }
        }
        let (dir_part, file_part) = match prefix.rfind('/') {
            Some(i) => (&prefix[..=i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        let known = self.known.borrow();
        let dot = PathBuf::from(".");
        for root in known.model_roots.iter().chain([&dot]) {
            let dir = root.join(dir_part);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with(file_part)
                    || name.starts_with('.') && !file_part.starts_with('.')
                {
                    continue;
                }
                let is_dir = e.path().is_dir();
                // Only what a primitive or .load reads: checkpoints, scripts,
                // images, tokenizers.
                let readable = [".safetensors", ".rhai", ".png", ".model"]
                    .iter()
                    .any(|x| name.ends_with(x));
                if !is_dir && !readable {
                    continue;
                }
                let replacement = format!("{dir_part}{name}{}", if is_dir { "/" } else { "" });
                if !out.iter().any(|p: &Pair| p.replacement == replacement) {
                    out.push(Pair {
                        display: replacement.clone(),
                        replacement,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.replacement.cmp(&b.replacement));
        out
    }
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let text = &line[..pos];
        if text.trim_start().starts_with('.') && !text.contains(' ') {
            let start = text.len() - text.trim_start().len();
            let word = text.trim_start();
            let c = DOT_COMMANDS
                .iter()
                .filter(|(n, _)| n.starts_with(word))
                .map(|(n, _)| Pair {
                    display: n.to_string(),
                    replacement: format!("{n} "),
                })
                .collect();
            return Ok((start, c));
        }
        if let Some(rest) = text.trim_start().strip_prefix(".help ") {
            let start = pos - rest.len();
            let c = docs::DOCS
                .iter()
                .filter(|d| d.name.starts_with(rest))
                .map(|d| Pair {
                    display: d.name.to_string(),
                    replacement: d.name.to_string(),
                })
                .collect();
            return Ok((start, c));
        }
        if let Some(rest) = text.trim_start().strip_prefix(".load ") {
            return Ok((pos - rest.len(), self.complete_path(rest)));
        }
        let lx = lex(text);
        if let Some(s) = lx.string_start {
            return Ok((s + 1, self.complete_path(&text[s + 1..])));
        }
        let start = text
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_ident(*c))
            .last()
            .map_or(pos, |(i, _)| i);
        let word = &text[start..];
        let (call, in_map) = enclosing_call(text, &lx);
        if in_map {
            // A key position: after `#{` or a `,`, not after `key:`.
            let before = text[..start].trim_end();
            if before.ends_with('{') || before.ends_with(',') {
                let c = docs::option_keys(call.as_deref().unwrap_or(""))
                    .into_iter()
                    .filter(|k| k.starts_with(word))
                    .map(|k| Pair {
                        display: k.to_string(),
                        replacement: format!("{k}: "),
                    })
                    .collect();
                return Ok((start, c));
            }
        }
        if word.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let after_dot = text[..start].ends_with('.');
        let known = self.known.borrow();
        let mut names: Vec<String> = Vec::new();
        if after_dot {
            names.extend(
                docs::DOCS
                    .iter()
                    .filter_map(|d| d.name.split_once('.').map(|x| x.1.to_string())),
            );
        } else {
            names.extend(
                docs::DOCS
                    .iter()
                    .filter(|d| d.name.chars().all(is_ident))
                    .map(|d| d.name.to_string()),
            );
            names.extend(known.variables.iter().cloned());
            names.extend(known.functions.iter().cloned());
        }
        names.sort();
        names.dedup();
        let c = names
            .into_iter()
            .filter(|n| n.starts_with(word))
            .map(|n| Pair {
                display: n.clone(),
                replacement: n,
            })
            .collect();
        Ok((start, c))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;

    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<String> {
        if pos < line.len() || line.trim_start().starts_with('.') {
            return None;
        }
        let lx = lex(line);
        if lx.string_start.is_some() {
            return None;
        }
        let (call, _) = enclosing_call(line, &lx);
        let d = docs::find(&call?)?;
        Some(format!("   {}", d.signature))
    }
}

impl Highlighter for ReplHelper {
    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        if self.color {
            Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
        } else {
            Cow::Borrowed(hint)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper() -> ReplHelper {
        let known = Known {
            variables: vec!["high".into(), "latent".into()],
            functions: vec!["twice".into()],
            model_roots: ModelRoots::new(vec![
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
            ]),
        };
        ReplHelper {
            known: Rc::new(RefCell::new(known)),
            color: false,
        }
    }

    fn complete(line: &str) -> Vec<String> {
        let h = helper();
        let hist = rustyline::history::DefaultHistory::new();
        let ctx = Context::new(&hist);
        h.complete(line, line.len(), &ctx)
            .unwrap()
            .1
            .into_iter()
            .map(|p| p.replacement)
            .collect()
    }

    #[test]
    fn completes_by_context() {
        assert!(complete("let m = load_mo").contains(&"load_model".to_string()));
        assert!(complete("sample(high, lat").contains(&"latent".to_string()));
        assert_eq!(
            complete("sample(high, latent, #{ positive: p, leftover"),
            ["leftover_noise: "]
        );
        assert!(complete("load_model(\"x\", #{ ").contains(&"offload: ".to_string()));
        assert!(complete("load_model(\"builtin:wan-tiny-h")
            .contains(&"builtin:wan-tiny-high".to_string()));
        assert!(complete("load_model(\"wan_t").contains(&"wan_tiny/".to_string()));
        assert!(complete("load_model(\"wan_tiny/orig")
            .contains(&"wan_tiny/original.safetensors".to_string()));
        assert_eq!(complete(".vr"), [".vram "]);
        assert_eq!(complete(".help samp"), ["sample", "sampler_state"]);
        assert!(complete("x.sha").contains(&"shape".to_string()));
    }

    #[test]
    fn hints_the_enclosing_primitive() {
        let h = helper();
        let hist = rustyline::history::DefaultHistory::new();
        let ctx = Context::new(&hist);
        let line = "let x = sample(high, x, #{ steps: 4";
        assert!(h
            .hint(line, line.len(), &ctx)
            .unwrap()
            .contains("sample(m, latent, opts) -> Tensor"));
        assert!(h.hint("let a = 1", 9, &ctx).is_none());
    }
}
