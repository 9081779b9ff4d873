//! Options maps (`#{ steps: 20, cfg: 3.5 }`) into typed values.
//!
//! Unknown keys are errors that name the key, so a typo like `cfgg` never
//! silently falls back to a default. Ints are accepted where floats are expected.

use super::errors::{script_err, ScriptResult};
use candle_core::Tensor;
use rhai::{Dynamic, Map};

pub struct Opts {
    func: &'static str,
    map: Map,
}

impl Opts {
    pub fn new(func: &'static str, map: Map, allowed: &[&str]) -> ScriptResult<Self> {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(script_err(format!(
                    "{func}: unknown option '{key}' (known: {})",
                    allowed.join(", ")
                )));
            }
        }
        Ok(Self { func, map })
    }

    /// Options for `func`, accepting exactly the keys its entry in the doc
    /// table ([`super::docs`]) lists, so help and behaviour cannot disagree.
    pub fn documented(func: &'static str, map: Map) -> ScriptResult<Self> {
        Self::new(func, map, &super::docs::option_keys(func))
    }

    fn get(&self, key: &str) -> Option<&Dynamic> {
        self.map.get(key).filter(|v| !v.is_unit())
    }

    fn wrong(&self, key: &str, want: &str, v: &Dynamic) -> Box<rhai::EvalAltResult> {
        script_err(format!(
            "{}: option '{key}' must be {want}, got {} ({v})",
            self.func,
            v.type_name()
        ))
    }

    pub fn opt_f64(&self, key: &str) -> ScriptResult<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => as_f64(v)
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a number", v)),
        }
    }

    pub fn f64(&self, key: &str, default: f64) -> ScriptResult<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub fn opt_int(&self, key: &str) -> ScriptResult<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_int()
                .map(Some)
                .map_err(|_| self.wrong(key, "an integer", v)),
        }
    }

    pub fn opt_usize(&self, key: &str) -> ScriptResult<Option<usize>> {
        match self.opt_int(key)? {
            None => Ok(None),
            Some(i) if i >= 0 => Ok(Some(i as usize)),
            Some(i) => Err(script_err(format!(
                "{}: option '{key}' must not be negative, got {i}",
                self.func
            ))),
        }
    }

    pub fn usize(&self, key: &str, default: usize) -> ScriptResult<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }

    pub fn bool(&self, key: &str, default: bool) -> ScriptResult<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().map_err(|_| self.wrong(key, "true or false", v)),
        }
    }

    pub fn opt_string(&self, key: &str) -> ScriptResult<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.is_string() => Ok(Some(v.to_string())),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    pub fn string(&self, key: &str, default: &str) -> ScriptResult<String> {
        Ok(self.opt_string(key)?.unwrap_or_else(|| default.to_string()))
    }

    pub fn opt_tensor(&self, key: &str) -> ScriptResult<Option<Tensor>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .clone()
                .try_cast::<Tensor>()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a tensor", v)),
        }
    }

    /// A script-visible custom type (a handle) under `key`, named `what` in errors.
    pub fn opt_custom<T: Clone + 'static>(&self, key: &str, what: &str) -> ScriptResult<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .clone()
                .try_cast::<T>()
                .map(Some)
                .ok_or_else(|| self.wrong(key, what, v)),
        }
    }

    pub fn opt_f32_list(&self, key: &str) -> ScriptResult<Option<Vec<f32>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let arr = v
                    .clone()
                    .into_array()
                    .map_err(|_| self.wrong(key, "an array of numbers", v))?;
                as_f32_list(&arr)
                    .map(Some)
                    .ok_or_else(|| self.wrong(key, "an array of numbers", v))
            }
        }
    }
}

/// A script array of numbers as f32 values; None if any element is not a number.
pub fn as_f32_list(arr: &rhai::Array) -> Option<Vec<f32>> {
    arr.iter().map(|x| as_f64(x).map(|f| f as f32)).collect()
}

/// A script number as f64 (ints accepted).
pub fn as_f64(v: &Dynamic) -> Option<f64> {
    v.as_float()
        .ok()
        .or_else(|| v.as_int().ok().map(|i| i as f64))
}

/// Largest tensor a script may create directly (elements): 1 GiB of f32,
/// ~50x a 720p 81-frame latent. Creation is native code the timeout cannot
/// interrupt, so a hostile `zeros([4294967295])` must fail up front (the
/// fuzzer found it tying up the machine at the old 16 GiB cap).
pub const MAX_ELEMENTS: usize = 1 << 28;

/// A script array of non-negative ints as dims, refusing shapes whose
/// allocation would abort the process instead of failing.
pub fn as_dims(v: &rhai::Array) -> ScriptResult<Vec<usize>> {
    let dims = v
        .iter()
        .map(|d| match d.as_int() {
            Ok(i) if i >= 0 => Ok(i as usize),
            _ => Err(script_err(format!(
                "shape entries must be non-negative integers, got {d}"
            ))),
        })
        .collect::<ScriptResult<Vec<usize>>>()?;
    check_elements(dims)
}

/// `dims` unchanged when the tensor would have at most [`MAX_ELEMENTS`].
pub fn check_elements(dims: Vec<usize>) -> ScriptResult<Vec<usize>> {
    let numel = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    match numel {
        Some(n) if n <= MAX_ELEMENTS => Ok(dims),
        _ => Err(script_err(format!(
            "shape {dims:?} has more than {MAX_ELEMENTS} elements"
        ))),
    }
}
