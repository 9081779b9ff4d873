//! The interactive REPL: rustyline editing and history, multi-line input,
//! and one persistent session.

use super::engine::{Session, SessionConfig};
use super::tables;
use rustyline::error::ReadlineError;

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

pub fn run(cfg: &SessionConfig) -> anyhow::Result<()> {
    let mut session = Session::new(cfg);
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("baton REPL: Rhai with load_model, sample, delete_model, vram(), ram() ... (.quit to leave)");
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
                    match line.trim() {
                        ".quit" | ".exit" => break,
                        ".vram" => {
                            println!(
                                "{}",
                                tables::display(&rhai::Dynamic::from_map(
                                    super::api::memory::vram_report(&session.runtime.borrow()),
                                ))
                            );
                            continue;
                        }
                        "" => continue,
                        _ => {}
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
                match session.eval(&code, &format!("<repl:{line_no}>")) {
                    Ok(v) if v.is_unit() => {}
                    Ok(v) => println!("{}", tables::display(&v)),
                    Err(e) => {
                        eprintln!("error: {e}");
                        if session.last_stop.is_some() {
                            eprintln!("(stopped; variables and loaded models are kept)");
                        }
                    }
                }
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
    use super::is_incomplete;

    #[test]
    fn detects_open_blocks() {
        assert!(is_incomplete("fn f(x) {\n"));
        assert!(is_incomplete("let a = [1,\n"));
        assert!(!is_incomplete("let a = \"{\";"));
        assert!(!is_incomplete("let a = 1; // {"));
        assert!(!is_incomplete("fn f() { 1 }"));
    }
}
