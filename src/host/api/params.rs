//! `param(name, default, help)`: a recipe's declared, overridable inputs.
//!
//! A shared recipe should run as-is and still be tunable without editing it:
//! `baton run recipe.rhai --set steps=8` fills `param("steps", 20, ...)`.
//! The value given on the command line is parsed to the default's type, so
//! a typo (`--set steps=8x`) fails naming the parameter instead of handing
//! the script a string. What each parameter resolved to goes into the run
//! manifest.

use crate::host::errors::{script_err, ScriptResult};
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
    let bad = |want: &str| format!("param '{name}': --set {name}={text} is not {want}");
    if default.is_int() {
        text.trim()
            .parse::<rhai::INT>()
            .map(Dynamic::from)
            .map_err(|_| bad("an integer"))
    } else if default.is_float() {
        text.trim()
            .parse::<rhai::FLOAT>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Dynamic::from)
            .ok_or_else(|| bad("a number"))
    } else if default.is_bool() {
        match text.trim() {
            "true" => Ok(Dynamic::TRUE),
            "false" => Ok(Dynamic::FALSE),
            _ => Err(bad("true or false")),
        }
    } else if default.is_string() {
        Ok(Dynamic::from(text.to_string()))
    } else {
        Err(format!(
            "param '{name}': the default must be an int, float, bool or string, got {}",
            default.type_name()
        ))
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
