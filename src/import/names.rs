//! Script-side spelling: variable names from node titles, Rhai literals.

use serde_json::Value;
use std::collections::HashSet;

/// Titles ComfyUI shows by default; they name the node type, not its role.
const DEFAULT_TITLES: &[&str] = &[
    "load diffusion model",
    "load clip",
    "load vae",
    "load image",
    "vae decode",
    "ksampler",
    "ksampler (advanced)",
    "loraloadermodelonly",
    "load lora",
    "modelsamplingsd3",
    "create video",
    "save video",
    "emptyhunyuanlatentvideo",
    "wanimagetovideo",
    "wan22imagetovideolatent",
];

/// A variable name for a node's title, or None when the title is a default.
pub fn from_title(title: Option<&str>, class: &str) -> Option<String> {
    let t = title?.trim();
    let lower = t.to_ascii_lowercase();
    if t.is_empty()
        || lower == class.to_ascii_lowercase()
        || DEFAULT_TITLES.contains(&lower.as_str())
    {
        return None;
    }
    let s = snake(t);
    (!s.is_empty() && s.len() <= 32).then_some(s)
}

/// `"Enable 4steps LoRA?"` -> `enable_4steps_lora`.
pub fn snake(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    let out = out.trim_end_matches('_').to_string();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        format!("n_{out}")
    } else {
        out
    }
}

/// Hands out unique variable names; Rhai keywords and reserved names are taken.
pub struct Namer {
    used: HashSet<String>,
}

const RHAI_RESERVED: &[&str] = &[
    "let",
    "const",
    "fn",
    "if",
    "else",
    "while",
    "loop",
    "for",
    "in",
    "do",
    "until",
    "break",
    "continue",
    "return",
    "throw",
    "try",
    "catch",
    "import",
    "export",
    "as",
    "private",
    "this",
    "true",
    "false",
    "switch",
    "global",
    "type_of",
    "print",
    "debug",
    "eval",
    "call",
    "curry",
    "is_def_var",
    "is_def_fn",
    "is_shared",
    "var",
    "static",
    "shared",
    "with",
    "match",
    "case",
    "public",
    "protected",
    "new",
    "use",
    "module",
    "package",
    "super",
    "thread",
    "spawn",
    "go",
    "await",
    "async",
    "sync",
    "yield",
    "default",
    "void",
    "null",
    "nil",
];

impl Namer {
    pub fn new(reserved: &[&str]) -> Self {
        let used = RHAI_RESERVED
            .iter()
            .chain(reserved)
            .map(|s| s.to_string())
            .collect();
        Self { used }
    }

    pub fn fresh(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "value" } else { base };
        let mut name = base.to_string();
        let mut k = 2;
        while self.used.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.used.insert(name.clone());
        name
    }
}

/// A Rhai string literal.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A float literal Rhai reads as a float (always with a point).
pub fn float(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains(['.', 'e', 'E']) || !x.is_finite() {
        s
    } else {
        format!("{s}.0")
    }
}

/// A float the sampler uses as f32 (the flow shift, as ComfyUI's
/// ModelSamplingSD3 does: a Python float meeting f32 tensors is rounded to
/// f32): the shortest literal that gives back that f32, so a float slider's
/// 8.000000000000002 is written 8.0. Values outside f32's range keep their
/// f64 form (the sampler then reports them).
pub fn float32(x: f64) -> String {
    let f = x as f32;
    if !f.is_finite() || !x.is_finite() {
        return float(x);
    }
    let s = format!("{f:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// A JSON scalar as a Rhai literal.
pub fn literal(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => string(s),
        Value::Null => "()".into(),
        other => string(&other.to_string()),
    }
}

/// One line of a `//` comment block: no line breaks, shortened when long.
pub fn comment_text(s: &str, max: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > max {
        let cut: String = one.chars().take(max).collect();
        format!("{cut}...")
    } else {
        one
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_become_names_unless_default() {
        assert_eq!(
            from_title(Some("Enable 4steps LoRA?"), "PrimitiveBoolean").as_deref(),
            Some("enable_4steps_lora")
        );
        assert_eq!(
            from_title(Some("KSampler (Advanced)"), "KSamplerAdvanced"),
            None
        );
        assert_eq!(
            from_title(Some("2nd pass"), "KSampler").as_deref(),
            Some("n_2nd_pass")
        );
        let mut n = Namer::new(&["steps"]);
        assert_eq!(n.fresh("steps"), "steps_2");
        assert_eq!(n.fresh("let"), "let_2");
    }

    #[test]
    fn literals_are_rhai() {
        assert_eq!(string("a \"b\"\n\\"), r#""a \"b\"\n\\""#);
        assert_eq!(float(8.0), "8.0");
        assert_eq!(float(8.000000000000002), "8.000000000000002");
        assert_eq!(float32(8.000000000000002), "8.0");
        assert_eq!(float32(5.1), "5.1");
        assert_eq!(float32(0.1 + 0.2), "0.3");
        assert_eq!(float32(12.0), "12.0");
        assert_eq!(float32(1e40), float(1e40));
        // Every literal gives back the f32 it stands for.
        for x in [
            8.000000000000002,
            5.1,
            0.30000000000000004,
            3.0e-5,
            1234.5678,
            1.0 / 3.0,
        ] {
            let back: f64 = float32(x).parse().unwrap();
            assert_eq!((back as f32).to_bits(), (x as f32).to_bits(), "{x}");
        }
        assert_eq!(
            literal(&serde_json::json!(774388746670969u64)),
            "774388746670969"
        );
    }
}
