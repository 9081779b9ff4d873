//! Tensor primitives: the Tensor type, arithmetic, load_tensors/save_tensors.

use super::{Shared, SharedPolicy};
use crate::host::errors::{script_err, tensor_err, ScriptResult};
use crate::host::options::as_dims;
use candle_core::{DType, Device, Tensor};
use rhai::{Array, Dynamic, Engine, Map};
use std::path::Path;

fn dtype_name(t: &Tensor) -> &'static str {
    crate::dtype::label(t.dtype())
}

fn describe(t: &Tensor) -> String {
    format!("Tensor{:?} {}", t.dims(), dtype_name(t))
}

/// The shape two tensors broadcast to, as torch broadcasts (dimensions
/// aligned from the right, each pair equal or one of them 1).
fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let at = |d: &[usize], i: usize| {
        if i < n - d.len() {
            1
        } else {
            d[i - (n - d.len())]
        }
    };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Both tensors in one dtype (f32 when they differ).
fn same_dtype(a: &Tensor, b: &Tensor) -> ScriptResult<(Tensor, Tensor)> {
    if a.dtype() != b.dtype() {
        Ok((
            a.to_dtype(DType::F32).map_err(tensor_err)?,
            b.to_dtype(DType::F32).map_err(tensor_err)?,
        ))
    } else {
        Ok((a.clone(), b.clone()))
    }
}

/// Elementwise op on tensors that broadcast like torch's, with an error
/// naming both shapes when they do not.
fn binary(
    op: &str,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> ScriptResult<Tensor> {
    let Some(shape) = broadcast_shape(a.dims(), b.dims()) else {
        return Err(script_err(format!(
            "cannot {op} tensors of shapes {:?} and {:?} (they do not broadcast)",
            a.dims(),
            b.dims()
        )));
    };
    let (a, b) = same_dtype(a, b)?;
    let grow = |t: &Tensor| -> candle_core::Result<Tensor> {
        if t.dims() == shape.as_slice() {
            Ok(t.clone())
        } else {
            t.broadcast_as(shape.as_slice())
        }
    };
    (|| f(&grow(&a)?, &grow(&b)?))().map_err(tensor_err)
}

/// torch.matmul: 1-D operands are promoted (and the added dimension removed
/// again), batch dimensions broadcast.
fn matmul(a: &Tensor, b: &Tensor) -> ScriptResult<Tensor> {
    let (a, b) = same_dtype(a, b)?;
    let (ra, rb) = (a.rank(), b.rank());
    if ra == 0 || rb == 0 {
        return Err(script_err(format!(
            "matmul: both operands need at least one dimension, got {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let k_a = a.dims()[ra - 1];
    let k_b = if rb == 1 {
        b.dims()[0]
    } else {
        b.dims()[rb - 2]
    };
    if k_a != k_b {
        return Err(script_err(format!(
            "matmul: shapes {:?} and {:?} do not chain ({k_a} vs {k_b})",
            a.dims(),
            b.dims()
        )));
    }
    let batch_a = &a.dims()[..ra.saturating_sub(2)];
    let batch_b = &b.dims()[..rb.saturating_sub(2)];
    let Some(batch) = broadcast_shape(batch_a, batch_b) else {
        return Err(script_err(format!(
            "matmul: batch dimensions of {:?} and {:?} do not broadcast",
            a.dims(),
            b.dims()
        )));
    };
    (|| {
        let a2 = if ra == 1 { a.unsqueeze(0)? } else { a.clone() };
        let b2 = if rb == 1 { b.unsqueeze(1)? } else { b.clone() };
        let (m, n) = (a2.dims()[a2.rank() - 2], b2.dims()[b2.rank() - 1]);
        let full = |t: &Tensor, rows: usize, cols: usize| -> candle_core::Result<Tensor> {
            let mut dims = batch.clone();
            dims.extend([rows, cols]);
            t.broadcast_as(dims)?.contiguous()
        };
        let mut out = full(&a2, m, k_a)?.matmul(&full(&b2, k_a, n)?)?;
        if rb == 1 {
            out = out.squeeze(out.rank() - 1)?;
        }
        if ra == 1 {
            out = out.squeeze(out.rank() - if rb == 1 { 1 } else { 2 })?;
        }
        Ok(out)
    })()
    .map_err(tensor_err)
}

/// `reshape(t, dims)`: one dimension may be -1 (inferred), as in torch.
fn reshape(t: &Tensor, dims: &rhai::Array) -> ScriptResult<Tensor> {
    let n = t.elem_count();
    let mut want = Vec::with_capacity(dims.len());
    let mut infer = None;
    for (i, d) in dims.iter().enumerate() {
        match d.as_int() {
            Ok(-1) if infer.is_none() => {
                infer = Some(i);
                want.push(1);
            }
            Ok(v) if v >= 0 => want.push(v as usize),
            _ => {
                return Err(script_err(format!(
                    "reshape: dims must be non-negative integers (one may be -1), got {dims:?}"
                )))
            }
        }
    }
    let known: usize = want.iter().product();
    if let Some(i) = infer {
        if known == 0 || !n.is_multiple_of(known) {
            return Err(script_err(format!(
                "reshape: cannot infer the -1 of {dims:?} for {n} elements (shape {:?})",
                t.dims()
            )));
        }
        want[i] = n / known;
    }
    if want.iter().product::<usize>() != n {
        return Err(script_err(format!(
            "reshape: a tensor of shape {:?} ({n} elements) cannot become {want:?}",
            t.dims()
        )));
    }
    t.reshape(want).map_err(tensor_err)
}

pub fn register(engine: &mut Engine, _rt: &Shared, policy: &SharedPolicy) {
    engine.register_type_with_name::<Tensor>("Tensor");
    engine.register_get("shape", |t: &mut Tensor| -> Array {
        t.dims().iter().map(|d| Dynamic::from(*d as i64)).collect()
    });
    engine.register_get("dtype", |t: &mut Tensor| dtype_name(t).to_string());
    engine.register_fn("to_string", |t: &mut Tensor| describe(t));
    engine.register_fn("to_debug", |t: &mut Tensor| describe(t));

    engine.register_fn("+", |a: Tensor, b: Tensor| {
        binary("add", &a, &b, |a, b| a + b)
    });
    engine.register_fn("-", |a: Tensor, b: Tensor| {
        binary("subtract", &a, &b, |a, b| a - b)
    });
    engine.register_fn("*", |a: Tensor, b: Tensor| {
        binary("multiply", &a, &b, |a, b| a * b)
    });
    macro_rules! scalar_ops {
        ($ty:ty) => {
            engine.register_fn("+", |a: Tensor, s: $ty| -> ScriptResult<Tensor> {
                (a + s as f64).map_err(tensor_err)
            });
            engine.register_fn("+", |s: $ty, a: Tensor| -> ScriptResult<Tensor> {
                (a + s as f64).map_err(tensor_err)
            });
            engine.register_fn("-", |a: Tensor, s: $ty| -> ScriptResult<Tensor> {
                (a - s as f64).map_err(tensor_err)
            });
            engine.register_fn("-", |s: $ty, a: Tensor| -> ScriptResult<Tensor> {
                a.affine(-1.0, s as f64).map_err(tensor_err)
            });
            engine.register_fn("*", |a: Tensor, s: $ty| -> ScriptResult<Tensor> {
                (a * s as f64).map_err(tensor_err)
            });
            engine.register_fn("*", |s: $ty, a: Tensor| -> ScriptResult<Tensor> {
                (a * s as f64).map_err(tensor_err)
            });
        };
    }
    scalar_ops!(f64);
    scalar_ops!(i64);

    engine.register_fn("matmul", |a: Tensor, b: Tensor| matmul(&a, &b));
    engine.register_fn("reshape", |t: Tensor, dims: Array| reshape(&t, &dims));
    engine.register_fn("tanh", |t: Tensor| -> ScriptResult<Tensor> {
        t.tanh().map_err(tensor_err)
    });
    engine.register_fn("exp", |t: Tensor| -> ScriptResult<Tensor> {
        t.exp().map_err(tensor_err)
    });
    engine.register_fn("sqrt", |t: Tensor| -> ScriptResult<Tensor> {
        t.sqrt().map_err(tensor_err)
    });

    engine.register_fn("zeros_like", |t: Tensor| -> ScriptResult<Tensor> {
        t.zeros_like().map_err(tensor_err)
    });
    engine.register_fn("zeros", |shape: Array| -> ScriptResult<Tensor> {
        Tensor::zeros(as_dims(&shape)?, DType::F32, &Device::Cpu).map_err(tensor_err)
    });
    engine.register_fn("randn", |shape: Array, seed: i64| -> ScriptResult<Tensor> {
        let dims = as_dims(&shape)?;
        let n: usize = dims.iter().product();
        let v = crate::sampling::noise::torch_randn(seed as u64, n);
        Tensor::from_vec(v, dims, &Device::Cpu).map_err(tensor_err)
    });
    engine.register_fn(
        "to_dtype",
        |t: Tensor, dtype: &str| -> ScriptResult<Tensor> {
            let d = super::models::parse_dtype(dtype)?;
            t.to_dtype(d).map_err(tensor_err)
        },
    );
    engine.register_fn(
        "narrow",
        |t: Tensor, dim: i64, start: i64, len: i64| -> ScriptResult<Tensor> {
            let d = t.dims();
            let ok = dim >= 0
                && (dim as usize) < d.len()
                && start >= 0
                && len >= 0
                && (start + len) as usize <= d[dim as usize];
            if !ok {
                return Err(script_err(format!(
                    "narrow({dim}, {start}, {len}) is out of range for a tensor of shape {d:?}"
                )));
            }
            t.narrow(dim as usize, start as usize, len as usize)
                .map_err(tensor_err)
        },
    );
    engine.register_indexer_get(|t: &mut Tensor, i: i64| -> ScriptResult<Tensor> {
        let n = t.dims().first().copied().unwrap_or(0) as i64;
        let idx = if i < 0 { n + i } else { i };
        if t.rank() == 0 || idx < 0 || idx >= n {
            return Err(script_err(format!(
                "index {i} out of range for tensor of shape {:?}",
                t.dims()
            )));
        }
        t.get(idx as usize).map_err(tensor_err)
    });
    engine.register_fn("to_list", |t: Tensor| -> ScriptResult<Array> {
        let v = t
            .to_dtype(DType::F64)
            .and_then(|t| t.flatten_all()?.to_vec1::<f64>())
            .map_err(tensor_err)?;
        Ok(v.into_iter().map(Dynamic::from).collect())
    });
    engine.register_fn("rel_l2", |a: Tensor, b: Tensor| -> ScriptResult<f64> {
        rel_l2(&a, &b)
    });
    engine.register_fn("max_abs", |t: Tensor| -> ScriptResult<f64> {
        t.to_dtype(DType::F32)
            .and_then(|t| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .map(|v| v as f64)
            .map_err(tensor_err)
    });
    engine.register_fn("mean", |t: Tensor| -> ScriptResult<f64> {
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all()?.mean(0)?.to_scalar::<f32>())
            .map(|v| v as f64)
            .map_err(tensor_err)
    });

    let pol = policy.clone();
    engine.register_fn("load_tensors", move |path: &str| -> ScriptResult<Map> {
        let p = pol
            .borrow()
            .read("load_tensors", path)
            .map_err(script_err)?;
        let tensors = candle_core::safetensors::load(&p, &Device::Cpu)
            .map_err(|e| script_err(format!("load_tensors: {}: {e}", p.display())))?;
        Ok(tensors
            .into_iter()
            .map(|(k, v)| (k.into(), Dynamic::from(v)))
            .collect())
    });
    let pol = policy.clone();
    engine.register_fn(
        "save_tensors",
        move |map: Map, path: &str| -> ScriptResult<String> {
            let p = pol
                .borrow()
                .write("save_tensors", path)
                .map_err(script_err)?;
            if pol.borrow().writes_enabled() {
                save_tensors(&map, &p)?;
            }
            Ok(p.display().to_string())
        },
    );
}

/// ||a - b|| / ||b|| in f64.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> ScriptResult<f64> {
    if a.dims() != b.dims() {
        return Err(script_err(format!(
            "rel_l2: shapes differ: {:?} vs {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let f = |t: &Tensor| -> candle_core::Result<Tensor> { t.to_dtype(DType::F64) };
    let (a, b) = (f(a).map_err(tensor_err)?, f(b).map_err(tensor_err)?);
    let num = (&a - &b)
        .and_then(|d| d.sqr()?.sum_all()?.to_scalar::<f64>())
        .map_err(tensor_err)?;
    let den = b
        .sqr()
        .and_then(|d| d.sum_all()?.to_scalar::<f64>())
        .map_err(tensor_err)?;
    Ok((num / den.max(1e-300)).sqrt())
}

/// Writes a safetensors file atomically: a temp file in the same directory,
/// renamed into place, so a crash never leaves a half-written output.
fn save_tensors(map: &Map, path: &Path) -> ScriptResult<()> {
    let mut tensors = std::collections::HashMap::new();
    for (k, v) in map {
        let t = v.clone().try_cast::<Tensor>().ok_or_else(|| {
            script_err(format!(
                "save_tensors: '{k}' is a {}, not a tensor",
                v.type_name()
            ))
        })?;
        tensors.insert(k.to_string(), t);
    }
    crate::media::write_atomically(path, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(|e| e.to_string())
    })
    .map_err(|e| script_err(format!("save_tensors: {e}")))?;
    Ok(())
}
