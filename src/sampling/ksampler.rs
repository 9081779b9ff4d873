//! KSamplerAdvanced's start/end/leftover-noise cut of a sigma list.
//!
//! Kept separate from the samplers because it decides *whether* anything runs:
//! ComfyUI returns the input latent untouched when the range is empty.

/// Cuts the full list (steps + 1 values) to the steps `start..end`.
///
/// Returns `None` when ComfyUI would run nothing and hand back the input latent.
/// With `leftover_noise == false` the last kept sigma is forced to 0 (a full
/// denoise), as `return_with_leftover_noise: disable` does.
pub fn cut(
    full: &[f32],
    start: usize,
    end: Option<usize>,
    leftover_noise: bool,
) -> Option<Vec<f32>> {
    let mut sigmas = full.to_vec();
    if let Some(end) = end {
        if end < sigmas.len() - 1 {
            sigmas.truncate(end + 1);
            if !leftover_noise {
                if let Some(last) = sigmas.last_mut() {
                    *last = 0.0;
                }
            }
        }
    }
    if start < sigmas.len() - 1 {
        Some(sigmas[start..].to_vec())
    } else {
        None
    }
}
