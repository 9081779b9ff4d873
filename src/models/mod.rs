//! Model architectures, each a candle module built from a `VarBuilder`.
pub mod umt5;
pub mod wan;
pub mod wan_vae;

/// `(layer, suffix)` for a per-layer fp8 weight scale (ComfyUI's fp8_scaled
/// files; checkpoint detection and the umT5 key map both read it): the legacy
/// `<layer>.scale_weight` or the newer `<layer>.weight_scale`.
pub fn fp8_scale_stem(key: &str) -> Option<(&str, &'static str)> {
    if let Some(stem) = key.strip_suffix(".scale_weight") {
        return Some((stem, "scale_weight"));
    }
    key.strip_suffix(".weight_scale")
        .map(|stem| (stem, "weight_scale"))
}
