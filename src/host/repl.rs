//! The interactive REPL: rustyline editing and history (in the user's data
//! dir), multi-line input and bracketed paste, completion and signature
//! hints (repl_helper.rs), dot-commands, errors with a caret under the
//! column, and one persistent session.

use super::api::memory::vram_report;
use super::api::models::available_report;
use super::docs;
use super::engine::{Session, SessionConfig};
use super::repl_helper::{Known, ReplHelper, DOT_COMMANDS};
use super::tables;
use rhai::Dynamic;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::Editor;
use std::cell::RefCell;
use std::rc::Rc;

/// True while brackets, braces or parentheses opened outside strings are unclosed.
pub fn is_incomplete(code: &str) -> bool {
    let mut depth = 0i64;
    let mut in_str: Option<char> = None;
    let mut escaped = false;
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                in_str = None;
            }
            continue;
        }
        match c {
            '"' | '`' | '\'' => in_str = Some(c),
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    depth > 0 || in_str == Some('`')
}

fn history_path() -> Option<std::path::PathBuf> {
    let dir = dirs::data_dir()?.join("baton");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("history"))
}

/// ANSI colour on stderr: only on a terminal, and never with `NO_COLOR`
/// (the REPL's errors and every log line follow it).
pub fn use_color() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// An error as the REPL shows it: the message (red), and for an error in
/// the entry itself, the offending line with a caret under the column.
pub fn render_error(err: &str, source: &str, code: &str, color: bool) -> String {
    let (red, dim, reset) = if color {
        ("\x1b[31m", "\x1b[2m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    let mut out = format!("{red}error: {err}{reset}\n");
    let first = err.lines().next().unwrap_or("");
    let Some(rest) = first.strip_prefix(source).and_then(|r| r.strip_prefix(':')) else {
        return out;
    };
    let mut nums = rest.splitn(3, ':');
    let (Some(Ok(line)), Some(Ok(col))) = (
        nums.next().map(str::parse::<usize>),
        nums.next().map(str::parse::<usize>),
    ) else {
        return out;
    };
    if let Some(text) = code.lines().nth(line.saturating_sub(1)) {
        out.push_str(&format!("{dim}{line:>4} |{reset} {text}\n"));
        out.push_str(&format!(
            "     {dim}|{reset} {}{red}^{reset}\n",
            " ".repeat(col.saturating_sub(1))
        ));
    }
    out
}

/// Refreshes what completion knows: variables, functions, model roots.
fn refresh(known: &Rc<RefCell<Known>>, session: &Session) {
    let mut k = known.borrow_mut();
    k.variables = session
        .scope
        .iter_raw()
        .map(|(name, _, _)| name.to_string())
        .collect();
    k.functions = session.function_names();
    k.model_roots = session.runtime.borrow().model_roots.clone();
}

enum Flow {
    Continue,
    Quit,
}

/// Runs one dot-command (`line` starts with '.').
fn dot_command(
    line: &str,
    session: &mut Session,
    editor: &mut Editor<ReplHelper, DefaultHistory>,
    color: bool,
) -> Flow {
    let (cmd, arg) = match line.split_once(char::is_whitespace) {
        Some((c, a)) => (c, a.trim()),
        None => (line, ""),
    };
    match cmd {
        ".quit" | ".exit" => return Flow::Quit,
        ".help" if arg.is_empty() => {
            println!("{}", docs::render_index());
            println!("dot-commands:");
            for (name, help) in DOT_COMMANDS {
                println!("  {name:<9} {help}");
            }
        }
        ".help" => match docs::find(arg) {
            Some(d) => print!("{}", docs::render_text(d)),
            None => eprint!(
                "{}",
                render_error(
                    &format!("no primitive '{arg}' (.help lists them)"),
                    "",
                    "",
                    color
                )
            ),
        },
        ".vram" => println!(
            "{}",
            tables::display(&Dynamic::from_map(vram_report(&session.runtime.borrow())))
        ),
        ".models" => {
            let rt = session.runtime.borrow();
            let loaded: Vec<String> = rt.models().map(|m| m.name.clone()).collect();
            if loaded.is_empty() {
                println!("loaded: none");
            } else {
                println!("loaded: {}", loaded.join(", "));
            }
            println!(
                "{}",
                tables::display(&Dynamic::from_map(available_report(rt.model_roots.dirs())))
            );
        }
        ".plan" => {
            let rt = session.runtime.borrow();
            let trace = rt.timeline.snapshot("this session", false, 0);
            if trace.events.is_empty() {
                println!("(nothing loaded or sampled yet in this session)");
            } else {
                print!(
                    "{}",
                    crate::plan::render(&crate::plan::from_trace(trace, None))
                );
            }
        }
        ".history" => {
            for (i, h) in editor.history().iter().enumerate() {
                println!("{:>4}  {}", i + 1, h.replace('\n', "\n      "));
            }
        }
        ".clear" => {
            let _ = editor.clear_screen();
        }
        ".load" if arg.is_empty() => eprintln!("usage: .load FILE"),
        ".load" => match session.run_file(std::path::Path::new(arg)) {
            Ok(v) if v.is_unit() => {}
            Ok(v) => println!("{}", tables::display(&v)),
            Err(e) => report(&e, arg, "", session, color),
        },
        other => eprintln!("unknown command {other} (.help lists them)"),
    }
    Flow::Continue
}

fn report(err: &str, source: &str, code: &str, session: &Session, color: bool) {
    eprint!("{}", render_error(err, source, code, color));
    if session.last_stop.is_some() {
        eprintln!("(stopped; variables and loaded models are kept)");
    }
}

pub fn run(cfg: &SessionConfig) -> anyhow::Result<()> {
    let mut session = Session::new(cfg);
    let color = use_color();
    let known = Rc::new(RefCell::new(Known::default()));
    refresh(&known, &session);
    let config = rustyline::Config::builder()
        .completion_type(rustyline::CompletionType::List)
        .bracketed_paste(true)
        .auto_add_history(false)
        .build();
    let mut editor: Editor<ReplHelper, DefaultHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(ReplHelper {
        known: known.clone(),
        color,
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("baton REPL: Rhai with load_model, sample, delete_model, vram() ... (Tab completes, .help, .quit)");
    let mut buffer = String::new();
    let mut line_no = 0usize;
    loop {
        let prompt = if buffer.is_empty() {
            "baton> "
        } else {
            "  ...> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if buffer.is_empty() {
                    let t = line.trim();
                    if t.is_empty() {
                        continue;
                    }
                    if t.starts_with('.') && !t.contains('\n') {
                        let _ = editor.add_history_entry(t);
                        match dot_command(t, &mut session, &mut editor, color) {
                            Flow::Quit => break,
                            Flow::Continue => {
                                refresh(&known, &session);
                                continue;
                            }
                        }
                    }
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if is_incomplete(&buffer) {
                    continue;
                }
                let code = std::mem::take(&mut buffer);
                let _ = editor.add_history_entry(code.trim_end());
                line_no += 1;
                let source = format!("<repl:{line_no}>");
                match session.eval(&code, &source) {
                    Ok(v) if v.is_unit() => {}
                    Ok(v) => println!("{}", tables::display(&v)),
                    Err(e) => report(&e, &source, &code, &session, color),
                }
                refresh(&known, &session);
            }
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{is_incomplete, render_error};

    #[test]
    fn errors_point_a_caret_at_their_column() {
        let code = "let a = 1;\nlet b = a +* 2;\n";
        let e = render_error("<repl:3>:2:12: syntax error: x", "<repl:3>", code, false);
        assert_eq!(
            e,
            "error: <repl:3>:2:12: syntax error: x\n   2 | let b = a +* 2;\n     |            ^\n"
        );
        let e = render_error("other.rhai:1:1: boom", "<repl:3>", code, false);
        assert_eq!(e, "error: other.rhai:1:1: boom\n");
    }

    #[test]
    fn detects_open_blocks() {
        assert!(is_incomplete("fn f(x) {\n"));
        assert!(is_incomplete("let a = [1,\n"));
        assert!(!is_incomplete("let a = \"{\";"));
        assert!(!is_incomplete("let a = 1; // {"));
        assert!(!is_incomplete("fn f() { 1 }"));
    }
}
