//! ComfyUI's `common_upscale(img, W, H, "bilinear", "center")`: a centre
//! crop to the target aspect, then torch's bilinear interpolation
//! (align_corners False, no antialiasing), in f32.

use candle_core::{DType, Device, Result, Tensor};

/// Rows (or columns) kept by the centre crop: `[start, n - start)`.
/// `old`/`new` are width/height aspects as Python doubles; `round` ties to even.
fn crop(ws: usize, hs: usize, w: usize, h: usize) -> (usize, usize) {
    let old = ws as f64 / hs as f64;
    let new = w as f64 / h as f64;
    if old > new {
        let x = ((ws as f64 - ws as f64 * (new / old)) / 2.0).round_ties_even() as usize;
        (x, 0)
    } else if old < new {
        let y = ((hs as f64 - hs as f64 * (old / new)) / 2.0).round_ties_even() as usize;
        (0, y)
    } else {
        (0, 0)
    }
}

/// Source index and weights for output `i` on an axis of `n_in` -> `n_out`
/// (torch's `area_pixel_compute_source_index`, f32).
fn taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|i| {
            let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(n_in - 1);
            let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Resizes every frame of `video` [B, C, F, Hs, Ws] to [B, C, F, H, W].
pub fn upscale_center(video: &Tensor, width: usize, height: usize) -> Result<Tensor> {
    let (b, c, f, hs, ws) = video.dims5()?;
    if hs == 0 || ws == 0 || width == 0 || height == 0 {
        candle_core::bail!(
            "resize: empty image {:?} or size {width}x{height}",
            video.dims()
        )
    }
    let (x0, y0) = crop(ws, hs, width, height);
    let (cw, ch) = (ws - 2 * x0, hs - 2 * y0);
    let src: Vec<f32> = video
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    let (ty, tx) = (taps(ch, height), taps(cw, width));
    let planes = b * c * f;
    let mut out = Vec::with_capacity(planes * height * width);
    for p in 0..planes {
        let plane = &src[p * hs * ws..(p + 1) * hs * ws];
        let at = |y: usize, x: usize| plane[(y + y0) * ws + x + x0];
        for &(ya, yb, h0, h1) in &ty {
            for &(xa, xb, w0, w1) in &tx {
                let top = w0 * at(ya, xa) + w1 * at(ya, xb);
                let bottom = w0 * at(yb, xa) + w1 * at(yb, xb);
                out.push(h0 * top + h1 * bottom);
            }
        }
    }
    Tensor::from_vec(out, (b, c, f, height, width), video.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_follow_the_fixture() {
        // ../shared/fixtures/wan_i2v: 52x36 -> 48x32 keeps rows [1, 35);
        // 40x40 -> rows [7, 33); 100x60 -> 96x64 keeps columns [5, 95).
        assert_eq!(crop(52, 36, 48, 32), (0, 1));
        assert_eq!(crop(40, 40, 48, 32), (0, 7));
        assert_eq!(crop(100, 60, 96, 64), (5, 0));
    }

    #[test]
    fn same_size_is_identity() {
        let v = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 4, 6))
            .unwrap();
        let r = upscale_center(&v, 6, 4).unwrap();
        let d: f32 = (r - &v)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0);
    }
}
