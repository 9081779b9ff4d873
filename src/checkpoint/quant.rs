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
//!
//! The per-layer form of the same record, a `<layer>.comfy_quant` tensor of
//! JSON bytes (`{"format": "float8_e4m3fn"}`), is read the same way: such
//! files list their quantised layers one tensor each.

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

/// Largest `comfy_quant` record read (they are a few dozen bytes).
const MAX_RECORD: usize = 4096;

/// The layers named by `<layer>.comfy_quant` tensors, `(layer, format)`.
fn per_layer_records(header: &Header) -> Result<Vec<(String, String)>, CheckpointError> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::new();
    for (key, e) in &header.tensors {
        let Some(layer) = key.strip_suffix(".comfy_quant") else {
            continue;
        };
        let file = &header.files[e.file];
        let bad = |reason: String| CheckpointError::Config {
            path: file.clone(),
            reason: format!("'{key}': {reason}"),
        };
        if e.dtype != safetensors::Dtype::U8 || e.bytes() > MAX_RECORD {
            return Err(bad(format!(
                "a comfy_quant record is a few bytes of JSON (U8), this is {:?} {:?}",
                e.dtype, e.shape
            )));
        }
        let mut bytes = vec![0u8; e.bytes()];
        std::fs::File::open(file)
            .and_then(|f| f.read_exact_at(&mut bytes, e.start as u64))
            .map_err(|source| CheckpointError::Io {
                path: file.clone(),
                source,
            })?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|err| bad(format!("not valid JSON ({err})")))?;
        let format = v
            .get("format")
            .and_then(|f| f.as_str())
            .ok_or_else(|| bad("no \"format\" string".into()))?;
        out.push((layer.to_string(), format.to_string()));
    }
    Ok(out)
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

/// Applies the metadata and the `comfy_quant` records to `tensors`
/// (canonical names): checks each listed layer, drops scales of unlisted
/// layers, and returns the quantised layers (canonical stem -> format).
/// Empty when the file has neither, which leaves the legacy encoding (a
/// `scale_weight` beside a weight) as it was.
pub fn apply(
    header: &Header,
    layout: Layout,
    tensors: &mut BTreeMap<String, TensorEntry>,
) -> Result<BTreeMap<String, String>, CheckpointError> {
    let from = |src: &'static str| move |(l, f): (String, String)| (l, f, src);
    let records = per_layer_records(header)?;
    if records.is_empty() && !header.metadata.contains_key(METADATA_KEY) {
        return Ok(BTreeMap::new());
    }
    let layers: Vec<(String, String, &str)> = listed_layers(header)?
        .unwrap_or_default()
        .into_iter()
        .map(from(METADATA_KEY))
        .chain(records.into_iter().map(from("its comfy_quant record")))
        .collect();
    let err = |reason: String| CheckpointError::Config {
        path: header.path.clone(),
        reason,
    };
    let mut quantized = BTreeMap::new();
    for (layer, format, src) in layers {
        if !SUPPORTED.contains(&format.as_str()) {
            return Err(err(format!(
                "layer '{layer}' is quantised as '{format}' ({src}); baton reads {} layers only",
                SUPPORTED.join(", ")
            )));
        }
        let stem = canonical_stem(&layer, layout).ok_or_else(|| {
            err(format!(
                "{src} lists layer '{layer}', which has no place in a Wan DiT"
            ))
        })?;
        let weight = tensors.get(&format!("{stem}.weight")).ok_or_else(|| {
            err(format!(
                "{src} lists layer '{layer}' ({format}), but the file has no '{layer}.weight'"
            ))
        })?;
        if weight.dtype != safetensors::Dtype::F8_E4M3 {
            return Err(err(format!(
                "{src} lists layer '{layer}' as {format}, but its weight is stored as {:?}",
                weight.dtype
            )));
        }
        let has_scale = ["weight_scale", "scale_weight"]
            .iter()
            .any(|s| tensors.contains_key(&format!("{stem}.{s}")));
        if !has_scale {
            return Err(err(format!(
                "{src} lists layer '{layer}' as {format}, but the file has no '{layer}.weight_scale'"
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
            "{}: {} scale tensors belong to layers the file does not list as quantised; they are \
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
