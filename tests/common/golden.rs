//! Predict-and-compare against the tiny DiT's golden fixtures: the paths a
//! script loads them from, the `predict` call on one golden case, a copy of
//! the fixture's config.json beside a rewritten checkpoint, and the
//! print-then-assert comparison the parity tests report with. Before these,
//! each parity test spelled the same lines out again.

use baton::models::wan::dit::WanDit;
use baton::models::wan::WanConfig;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

/// The tiny DiT fixture, relative to the repository root (scripts resolve it).
pub const TINY_DIT: &str = "tests/fixtures/wan_tiny/original.safetensors";

/// The diffusers golden forward cases (`caseN_x`, `caseN_t`,
/// `caseN_context`, `caseN_out`), relative to the repository root.
pub const FORWARD_CASES: &str = "tests/fixtures/wan_tiny/forward_cases.safetensors";

/// Rhai for `model`'s prediction on golden case `case` ("case0", "case1",
/// ...) of the cases map `cases` (a script variable holding
/// [`FORWARD_CASES`]).
pub fn predict_case(model: &str, cases: &str, case: &str) -> String {
    format!("predict({model}, {cases}.{case}_x, {cases}.{case}_t, {cases}.{case}_context)")
}

/// Copies the tiny fixture's config.json into `dir`, so a checkpoint
/// rewritten there loads with the fixture's heads.
pub fn copy_tiny_config(dir: &Path) {
    std::fs::copy(
        super::fixture("wan_tiny/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
}

/// The tiny DiT's weights mapped in `dtype` on the CPU.
pub fn tiny_dit_vb(dtype: DType) -> VarBuilder<'static> {
    let path = super::fixture("wan_tiny/original.safetensors");
    // SAFETY: the fixture file is not modified while mapped.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, &Device::Cpu) }
        .expect("mmap original.safetensors")
}

/// The tiny DiT, whole and resident, in `dtype`.
pub fn tiny_dit(dtype: DType) -> WanDit {
    WanDit::new(&WanConfig::fixture_tiny(), tiny_dit_vb(dtype)).expect("build WanDit")
}

/// Prints `what: rel L2 .., max abs ..` and asserts `actual` is within
/// `max_rel_l2` of `expected` (see [`super::assert_close`]).
pub fn report_close(actual: &Tensor, expected: &Tensor, max_rel_l2: f64, what: &str) {
    println!(
        "{what}: rel L2 {:.3e}, max abs {:.3e}",
        super::rel_l2(actual, expected),
        super::max_abs_diff(actual, expected)
    );
    super::assert_close(actual, expected, max_rel_l2, what);
}
