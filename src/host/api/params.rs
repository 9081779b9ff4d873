//! `param(name, default, help)`: a recipe's declared, overridable inputs.
//!
//! A shared recipe should run as-is and still be tunable without editing it:
//! `baton run recipe.rhai --set steps=8` fills `param("steps", 20, ...)`.
//! The value given on the command line is parsed to the default's type, so
//! a typo (`--set steps=8x`) fails naming the parameter instead of handing
//! the script a string. What each parameter resolved to goes into the run
//! manifest.

use crate::host::errors::{script_err, ScriptResult};
use crate::host::params_text::{parse_as, Kind, Typed};
use rhai::{Dynamic, Engine};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// The `--set` values and what each declared parameter resolved to.
#[derive(Debug, Default)]
pub struct Params {
    set: BTreeMap<String, String>,
    /// name -> (value used, whether it came from `--set`), in declaration order.
    resolved: Vec<(String, serde_json::Value, bool)>,
}

pub type SharedParams = Rc<RefCell<Params>>;

impl Params {
    pub fn new(set: &[(String, String)]) -> Self {
        Self {
            set: set.iter().cloned().collect(),
            resolved: Vec::new(),
        }
    }

    /// The names given with `--set`.
    pub fn set_names(&self) -> impl Iterator<Item = &str> {
        self.set.keys().map(String::as_str)
    }

    /// Each declared parameter with the value it took, as JSON.
    pub fn resolved(&self) -> serde_json::Map<String, serde_json::Value> {
        self.resolved
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect()
    }

    /// The value for `name`: its `--set` text parsed as `default`'s type, or `default`.
    pub fn value(&mut self, name: &str, default: Dynamic) -> Result<Dynamic, String> {
        let (v, from_set) = match self.set.get(name) {
            None => (default, false),
            Some(text) => (parse_like(name, text, &default)?, true),
        };
        let json = to_json(&v);
        self.resolved.retain(|(k, _, _)| k != name);
        self.resolved.push((name.to_string(), json, from_set));
        Ok(v)
    }
}

/// `text` parsed to the type of `default` (int, float, bool or string).
fn parse_like(name: &str, text: &str, default: &Dynamic) -> Result<Dynamic, String> {
    let kind = if default.is_int() {
        Kind::Int
    } else if default.is_float() {
        Kind::Float
    } else if default.is_bool() {
        Kind::Bool
    } else if default.is_string() {
        Kind::Str
    } else {
        return Err(format!(
            "param '{name}': the default must be an int, float, bool or string, got {}",
            default.type_name()
        ));
    };
    match parse_as(text, kind) {
        Ok(Typed::Int(i)) => Ok(Dynamic::from(i as rhai::INT)),
        Ok(Typed::Float(f)) => Ok(Dynamic::from(f as rhai::FLOAT)),
        Ok(Typed::Bool(b)) => Ok(Dynamic::from(b)),
        Ok(Typed::Str(s)) => Ok(Dynamic::from(s)),
        Err(want) => Err(format!("param '{name}': --set {name}={text} is not {want}")),
    }
}

fn to_json(v: &Dynamic) -> serde_json::Value {
    if let Ok(i) = v.as_int() {
        i.into()
    } else if let Ok(f) = v.as_float() {
        serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
    } else if let Ok(b) = v.as_bool() {
        b.into()
    } else {
        v.to_string().into()
    }
}

pub fn register(engine: &mut Engine, params: &SharedParams) {
    let p = params.clone();
    engine.register_fn(
        "param",
        move |name: &str, default: Dynamic, _help: &str| -> ScriptResult<Dynamic> {
            p.borrow_mut().value(name, default).map_err(script_err)
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_take_the_default_type() {
        let mut p = Params::new(&[
            ("steps".into(), "8".into()),
            ("cfg".into(), "3".into()),
            ("go".into(), "false".into()),
            ("prompt".into(), "a cat".into()),
        ]);
        assert_eq!(
            p.value("steps", Dynamic::from(20_i64)).unwrap().as_int(),
            Ok(8)
        );
        assert_eq!(
            p.value("cfg", Dynamic::from(3.5)).unwrap().as_float(),
            Ok(3.0)
        );
        assert_eq!(p.value("go", Dynamic::TRUE).unwrap().as_bool(), Ok(false));
        assert_eq!(p.value("prompt", "x".into()).unwrap().to_string(), "a cat");
        assert_eq!(
            p.value("seed", Dynamic::from(7_i64)).unwrap().as_int(),
            Ok(7)
        );
        assert_eq!(p.resolved()["steps"], 8);
        assert_eq!(p.resolved()["seed"], 7);
    }

    #[test]
    fn a_bad_value_names_the_parameter() {
        let mut p = Params::new(&[("steps".into(), "8x".into())]);
        let e = p.value("steps", Dynamic::from(20_i64)).unwrap_err();
        assert!(e.contains("param 'steps'") && e.contains("integer"), "{e}");
    }
}
