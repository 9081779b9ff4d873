//! Helpers shared by the integration tests: golden comparisons and fixture paths.
#![allow(dead_code)]

use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn load_fixture(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("loading fixture {rel}: {e}"))
}

/// Relative L2 error ||a - b|| / ||b||, computed in f64.
pub fn rel_l2(actual: &Tensor, expected: &Tensor) -> f64 {
    let a = flat(actual);
    let b = flat(expected);
    assert_eq!(a.len(), b.len(), "element count differs");
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        num += (x - y) * (x - y);
        den += y * y;
    }
    (num / den.max(1e-300)).sqrt()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("tensor to f64 vec")
}

/// Asserts `actual` matches `expected` within a relative L2 error, printing the
/// worst element and the error when it does not.
pub fn assert_close(actual: &Tensor, expected: &Tensor, max_rel_l2: f64, what: &str) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape differs");
    let err = rel_l2(actual, expected);
    if !(err <= max_rel_l2) {
        let a = flat(actual);
        let b = flat(expected);
        let (i, d) = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .enumerate()
            .fold((0, 0f64), |m, (i, d)| if d > m.1 { (i, d) } else { m });
        panic!(
            "{what}: rel L2 {err:.3e} > {max_rel_l2:.1e}; worst element {i}: {} vs {} (|diff| {d:.3e})",
            a[i], b[i]
        );
    }
}

/// Largest absolute difference.
pub fn max_abs_diff(actual: &Tensor, expected: &Tensor) -> f64 {
    flat(actual)
        .iter()
        .zip(&flat(expected))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
