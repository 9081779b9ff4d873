//! Script-facing errors, and turning Rhai's nested errors into
//! `file:line:col: message` lines.

use rhai::{EvalAltResult, Position};
use std::fmt::Display;

pub type ScriptResult<T> = Result<T, Box<EvalAltResult>>;

/// A runtime error for the script; Rhai fills in the call's position.
pub fn script_err(msg: impl Display) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(msg.to_string().into(), Position::NONE).into()
}

/// A tensor (candle) error for the script, without candle's backtrace.
pub fn tensor_err(e: candle_core::Error) -> Box<EvalAltResult> {
    script_err(crate::runtime::error::plain_error(&e))
}

/// `file:line` of the current call, e.g. "demo.rhai:14".
pub fn call_site(ctx: &rhai::NativeCallContext) -> String {
    let pos = ctx.call_position();
    let src = ctx.call_source().unwrap_or("<repl>");
    match pos.line() {
        Some(l) => format!("{src}:{l}"),
        None => src.to_string(),
    }
}

/// Formats an evaluation error as `file:line:col: message`, using the
/// innermost position (inside the function or module where it happened).
pub fn describe(err: &EvalAltResult, default_source: &str) -> String {
    let mut chain = Vec::new();
    let (source, pos, msg) = innermost(err, default_source, &mut chain);
    let loc = match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{source}:{l}:{c}"),
        (Some(l), None) => format!("{source}:{l}"),
        _ => source,
    };
    let mut out = format!("{loc}: {msg}");
    for c in chain.iter().rev() {
        out.push_str(&format!("\n  {c}"));
    }
    out
}

fn innermost(
    err: &EvalAltResult,
    source: &str,
    chain: &mut Vec<String>,
) -> (String, Position, String) {
    match err {
        EvalAltResult::ErrorInFunctionCall(name, src, inner, pos) => {
            let here = if src.is_empty() { source } else { src.as_str() };
            chain.push(format!("in call to '{name}' at {}", fmt_pos(here, *pos)));
            innermost(inner, here, chain)
        }
        EvalAltResult::ErrorInModule(name, inner, pos) => {
            chain.push(format!(
                "in module '{name}' imported at {}",
                fmt_pos(source, *pos)
            ));
            innermost(inner, name, chain)
        }
        EvalAltResult::ErrorRuntime(v, pos) => (source.to_string(), *pos, v.to_string()),
        // on_progress's token says why (Ctrl-C or the timeout).
        EvalAltResult::ErrorTerminated(why, pos) => (source.to_string(), *pos, why.to_string()),
        other => {
            let pos = other.position();
            let text = other.to_string();
            let suffix = format!(" ({pos})");
            let msg = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
            (source.to_string(), pos, msg)
        }
    }
}

fn fmt_pos(src: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{src}:{l}:{c}"),
        _ => src.to_string(),
    }
}
