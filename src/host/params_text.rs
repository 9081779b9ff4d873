//! Command-line text to typed values: `NAME=VALUE` pairs (`--set`,
//! `--param`, `--map`) and a value read as the type of a default.
//!
//! `baton run --set` fills a recipe's `param(...)` and `baton import
//! --param` changes an imported script's defaults; both read the text the
//! same way. Whitespace around the name and the value is dropped; quotes
//! are not special (the shell has already removed its own).

/// The types a parameter's default can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Float,
    Bool,
    Str,
}

/// A value parsed as a [`Kind`].
#[derive(Debug, Clone, PartialEq)]
pub enum Typed {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

/// Splits `NAME=VALUE` at the first `=`, trimming both sides. The name must
/// not be empty; the value may be.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected NAME=VALUE, got '{s}'")),
    }
}

/// `text` (trimmed) read as `kind`: an integer, a finite number, `true` or
/// `false`, or the text itself. The error says what was expected ("an
/// integer", "a number", "true or false") for the caller's message.
pub fn parse_as(text: &str, kind: Kind) -> Result<Typed, &'static str> {
    let t = text.trim();
    match kind {
        Kind::Int => t.parse::<i64>().map(Typed::Int).map_err(|_| "an integer"),
        Kind::Float => t
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Typed::Float)
            .ok_or("a number"),
        Kind::Bool => match t {
            "true" => Ok(Typed::Bool(true)),
            "false" => Ok(Typed::Bool(false)),
            _ => Err("true or false"),
        },
        Kind::Str => Ok(Typed::Str(t.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_the_first_equals_and_trim() {
        assert_eq!(parse_pair("steps=8"), Ok(("steps".into(), "8".into())));
        assert_eq!(parse_pair(" steps = 8 "), Ok(("steps".into(), "8".into())));
        assert_eq!(
            parse_pair("prompt=a=b, c "),
            Ok(("prompt".into(), "a=b, c".into()))
        );
        assert_eq!(parse_pair("empty="), Ok(("empty".into(), String::new())));
        assert_eq!(
            parse_pair("x.safetensors=builtin:wan-tiny-high"),
            Ok(("x.safetensors".into(), "builtin:wan-tiny-high".into()))
        );
        for bad in ["steps", "=8", " =8", ""] {
            assert_eq!(
                parse_pair(bad),
                Err(format!("expected NAME=VALUE, got '{bad}'"))
            );
        }
    }

    #[test]
    fn ints() {
        assert_eq!(parse_as("8", Kind::Int), Ok(Typed::Int(8)));
        assert_eq!(parse_as(" -3 ", Kind::Int), Ok(Typed::Int(-3)));
        assert_eq!(parse_as("+4", Kind::Int), Ok(Typed::Int(4)));
        for bad in ["8x", "eight", "1.5", "", "1e3"] {
            assert_eq!(parse_as(bad, Kind::Int), Err("an integer"), "{bad}");
        }
    }

    #[test]
    fn floats() {
        assert_eq!(parse_as("3", Kind::Float), Ok(Typed::Float(3.0)));
        assert_eq!(parse_as(" 3.5\t", Kind::Float), Ok(Typed::Float(3.5)));
        assert_eq!(parse_as("-1e-2", Kind::Float), Ok(Typed::Float(-0.01)));
        for bad in ["x", "", "inf", "NaN", "1.0.0"] {
            assert_eq!(parse_as(bad, Kind::Float), Err("a number"), "{bad}");
        }
    }

    #[test]
    fn bools() {
        assert_eq!(parse_as("true", Kind::Bool), Ok(Typed::Bool(true)));
        assert_eq!(parse_as(" false ", Kind::Bool), Ok(Typed::Bool(false)));
        for bad in ["True", "1", "yes", ""] {
            assert_eq!(parse_as(bad, Kind::Bool), Err("true or false"), "{bad}");
        }
    }

    #[test]
    fn strings_are_trimmed_and_otherwise_verbatim() {
        assert_eq!(
            parse_as("a cat, sleeping", Kind::Str),
            Ok(Typed::Str("a cat, sleeping".into()))
        );
        assert_eq!(
            parse_as("  a cat ", Kind::Str),
            Ok(Typed::Str("a cat".into()))
        );
        assert_eq!(parse_as("", Kind::Str), Ok(Typed::Str(String::new())));
        // Quotes are part of the value: the shell removed its own.
        assert_eq!(
            parse_as("\"a cat\"", Kind::Str),
            Ok(Typed::Str("\"a cat\"".into()))
        );
        assert_eq!(parse_as("8", Kind::Str), Ok(Typed::Str("8".into())));
    }
}
