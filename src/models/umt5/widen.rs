//! `x · wᵀ` for a bf16 weight on the CPU without widening the whole weight
//! first: the weight is widened to f32 a slab of output rows at a time into
//! one reused buffer, and each slab is multiplied straight into its columns
//! of the output with the `gemm` crate (the one candle's matmul uses).
//!
//! Widening a umT5-XXL block's 193M weights per call into fresh f32 tensors
//! wrote (and page-faulted in) 772 MB per block per forward; a slab stays in
//! cache between its widening and its product. The f32 values multiplied
//! are the same as after a whole-tensor cast, and the reduction over the
//! inner dim is not split, so results match the widening path to f32
//! rounding of the product's own blocking.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use rayon::prelude::*;

/// Output rows of the weight widened per slab (a 4096-wide slab is 2 MiB).
const SLAB: usize = 128;

/// `x [.., k] f32 · w [n, k] bf16 ᵀ -> [.., n] f32` on the CPU, or `None`
/// when the operands are not contiguous CPU f32 / bf16 (the caller then
/// widens and calls candle).
pub fn matmul_bf16_weight(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || w.dtype() != DType::BF16 {
        return Ok(None);
    }
    let (n, k) = w.dims2()?;
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&k) {
        candle_core::bail!(
            "umt5 linear: input {:?} against weight [{n}, {k}]",
            x.dims()
        )
    }
    let m = x.elem_count() / k.max(1);
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(xv)), Storage::Cpu(CpuStorage::BF16(wv))) = (&*xs, &*ws)
    else {
        return Ok(None);
    };
    let (Some((xa, xb)), Some((wa, wb))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
    else {
        return Ok(None);
    };
    let (xv, wv) = (&xv[xa..xb], &wv[wa..wb]);
    let mut out = vec![0f32; m * n];
    let mut slab = vec![0f32; SLAB.min(n) * k];
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let mut r0 = 0;
    while r0 < n {
        let rows = SLAB.min(n - r0);
        let src = &wv[r0 * k..(r0 + rows) * k];
        let dst = &mut slab[..rows * k];
        dst.par_chunks_mut(k)
            .zip(src.par_chunks(k))
            .for_each(|(o, i)| {
                for (o, i) in o.iter_mut().zip(i) {
                    *o = crate::models::wan::fast::from_bf16(*i);
                }
            });
        // out[:, r0..r0+rows] = x [m, k] · slab [rows, k]ᵀ
        // SAFETY: the strides describe in-bounds views: x row-major [m, k],
        // the slab read transposed (element (kk, j) at j * k + kk), and the
        // output columns r0.. of the row-major [m, n] output.
        unsafe {
            gemm::gemm(
                m,
                rows,
                k,
                out.as_mut_ptr().add(r0),
                1,
                n as isize,
                false,
                xv.as_ptr(),
                1,
                k as isize,
                dst.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        r0 += rows;
    }
    drop((xs, ws));
    *dims.last_mut().expect("k") = n;
    Tensor::from_vec(out, dims, x.device()).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_widening_then_matmul() {
        let dev = Device::Cpu;
        // 300 output rows: two full slabs and a partial one.
        let x = Tensor::randn(0f32, 1.0, (2, 5, 64), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (300, 64), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let got = matmul_bf16_weight(&x, &w).unwrap().unwrap();
        let want = x
            .broadcast_matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
            .unwrap();
        assert_eq!(got.dims(), &[2, 5, 300]);
        let err = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(err < 1e-5, "max abs difference {err}");
        assert!(matmul_bf16_weight(&x, &w.to_dtype(DType::F32).unwrap())
            .unwrap()
            .is_none());
    }
}
