//! ComfyUI's newest fp8 encoding: the header's `_quantization_metadata`
//! (`{"format_version": "1.0", "layers": {"<layer>": {"format": ...}}}`)
//! names every quantised layer and its format. When a file carries it, it
//! decides, as it does in ComfyUI's mixed-precision loader:
//!
//! - a listed `float8_e4m3fn` layer must hold an F8_E4M3 weight and its
//!   `<layer>.weight_scale`, and loads as `fp8 · scale`;
//! - a layer it does not list loads as a plain tensor: a `weight_scale`
//!   beside it is not applied (it is dropped, with a warning);
//! - any other format (int8 blocks, fp4, ...) is refused, naming the layer,
//!   rather than read as something it is not.

use super::layout::{diffusers_to_original, strip_prefix, Layout};
use super::{CheckpointError, Header, TensorEntry};
use std::collections::BTreeMap;

/// The header key ComfyUI writes.
pub const METADATA_KEY: &str = "_quantization_metadata";

/// The formats baton reads.
pub const SUPPORTED: &[&str] = &["float8_e4m3fn"];

/// The layers the metadata lists, `(name as written, format)`; `None` when
/// the file has no `_quantization_metadata`.
pub fn listed_layers(header: &Header) -> Result<Option<Vec<(String, String)>>, CheckpointError> {
    let Some(text) = header.metadata.get(METADATA_KEY) else {
        return Ok(None);
    };
    let bad = |reason: String| CheckpointError::Config {
        path: header.path.clone(),
        reason: format!("{METADATA_KEY}: {reason}"),
    };
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    if let Some(version) = v.get("format_version") {
        let version = version.as_str().unwrap_or_default();
        if !version.starts_with("1.") {
            return Err(bad(format!(
                "format_version {:?} is not one baton reads (1.x)",
                v["format_version"]
            )));
        }
    }
    let layers = v
        .get("layers")
        .and_then(|l| l.as_object())
        .ok_or_else(|| bad("no \"layers\" object".into()))?;
    layers
        .iter()
        .map(|(name, cfg)| {
            let format = cfg
                .get("format")
                .and_then(|f| f.as_str())
                .ok_or_else(|| bad(format!("layer '{name}' has no \"format\" string")))?;
            Ok((name.clone(), format.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A listed layer's canonical stem (original layout, no prefix).
fn canonical_stem(layer: &str, layout: Layout) -> Option<String> {
    let stem = strip_prefix(&format!("{layer}.weight")).to_string();
    let weight = match layout {
        Layout::Original => Some(stem),
        Layout::Diffusers => diffusers_to_original(&stem),
    }?;
    weight.strip_suffix(".weight").map(str::to_string)
}

/// Applies the metadata to `tensors` (canonical names): checks each listed
/// layer, drops scales of unlisted layers, and returns the quantised layers
/// (canonical stem -> format). Empty when the file has no metadata, which
/// leaves the older encodings (a scale beside a weight) as they were.
pub fn apply(
    header: &Header,
    layout: Layout,
    tensors: &mut BTreeMap<String, TensorEntry>,
) -> Result<BTreeMap<String, String>, CheckpointError> {
    let Some(layers) = listed_layers(header)? else {
        return Ok(BTreeMap::new());
    };
    let err = |reason: String| CheckpointError::Config {
        path: header.path.clone(),
        reason,
    };
    let mut quantized = BTreeMap::new();
    for (layer, format) in layers {
        if !SUPPORTED.contains(&format.as_str()) {
            return Err(err(format!(
                "layer '{layer}' is quantised as '{format}' ({METADATA_KEY}); baton reads {} layers only",
                SUPPORTED.join(", ")
            )));
        }
        let stem = canonical_stem(&layer, layout).ok_or_else(|| {
            err(format!(
                "{METADATA_KEY} lists layer '{layer}', which has no place in a Wan DiT"
            ))
        })?;
        let weight = tensors.get(&format!("{stem}.weight")).ok_or_else(|| {
            err(format!(
                "{METADATA_KEY} lists layer '{layer}' ({format}), but the file has no '{layer}.weight'"
            ))
        })?;
        if weight.dtype != safetensors::Dtype::F8_E4M3 {
            return Err(err(format!(
                "{METADATA_KEY} lists layer '{layer}' as {format}, but its weight is stored as {:?}",
                weight.dtype
            )));
        }
        let has_scale = ["weight_scale", "scale_weight"]
            .iter()
            .any(|s| tensors.contains_key(&format!("{stem}.{s}")));
        if !has_scale {
            return Err(err(format!(
                "{METADATA_KEY} lists layer '{layer}' as {format}, but the file has no '{layer}.weight_scale'"
            )));
        }
        quantized.insert(stem, format);
    }
    // Scales of layers the metadata does not list are not applied.
    let stray: Vec<String> = tensors
        .keys()
        .filter(|k| {
            crate::models::fp8_scale_stem(k).is_some_and(|(stem, _)| !quantized.contains_key(stem))
        })
        .cloned()
        .collect();
    if !stray.is_empty() {
        tracing::warn!(
            "{}: {} scale tensors belong to layers {METADATA_KEY} does not list; they are \
             not applied (as in ComfyUI): {:?}",
            header.path.display(),
            stray.len(),
            stray
        );
    }
    for k in stray {
        tensors.remove(&k);
    }
    Ok(quantized)
}
