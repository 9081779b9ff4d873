//! A `VarBuilder` backend that hands out checkpoint tensors with LoRA deltas
//! added: the base from the memory-mapped file, the sum in f32, rounded once
//! to the dtype the model asks for.

use super::Lora;
use crate::checkpoint::CheckpointSource;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::{SimpleBackend, VarBuilder};
use std::sync::Arc;

/// LoRAs in the order they were applied, each with its strength.
pub type LoraSet = Vec<(Arc<Lora>, f32)>;

pub struct LoraBackend {
    pub base: Arc<CheckpointSource>,
    pub loras: LoraSet,
}

impl LoraBackend {
    /// A `VarBuilder` at the model root; a plain checkpoint one when the set is
    /// empty, so an unpatched layer is read exactly as at load time.
    pub fn var_builder(
        base: &Arc<CheckpointSource>,
        loras: &LoraSet,
        dtype: DType,
        dev: &Device,
    ) -> VarBuilder<'static> {
        if loras.is_empty() {
            return base.var_builder(dtype, dev);
        }
        let backend: Box<dyn SimpleBackend> = Box::new(Self {
            base: base.clone(),
            loras: loras.clone(),
        });
        VarBuilder::from_backend(backend, dtype, dev.clone())
    }

    /// The LoRAs on `weight` as one low-rank pair in f32: `A` [R, in] (the
    /// `down` factors stacked) and `B` [out, R] (the `up` factors, each times
    /// strength · alpha / rank), so that the delta is `B·A`, never formed.
    /// A full-weight `diff` cannot be a low-rank branch and is refused.
    fn low_rank(&self, weight: &str) -> candle_core::Result<(Tensor, Tensor)> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (lora, strength) in &self.loras {
            let Some(e) = lora.entries.get(weight) else {
                continue;
            };
            if e.diff.is_some() {
                candle_core::bail!(
                    "LoRA '{}': a full-weight diff for '{weight}' cannot be applied to a GGUF \
                     model (its weights stay quantized; only low-rank LoRAs run beside them)",
                    lora.path.display()
                );
            }
            let (Some(down), Some(up)) = (&e.down, &e.up) else {
                continue;
            };
            let rank = down.dims()[0];
            let scale = *strength as f64 * e.alpha.unwrap_or(rank as f32) as f64 / rank as f64;
            a.push(down.to_dtype(DType::F32)?.flatten_from(1)?);
            b.push((up.to_dtype(DType::F32)?.flatten_from(1)? * scale)?);
        }
        if a.is_empty() {
            candle_core::bail!("no low-rank LoRA factors for '{weight}'");
        }
        Ok((Tensor::cat(&a, 0)?, Tensor::cat(&b, 1)?))
    }

    /// The tensor `name` with every delta of the set added, in `dtype`.
    pub fn merged(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if !self.loras.iter().any(|(l, _)| l.touches(name)) {
            return self.base.tensor(name, dtype, dev);
        }
        let mut w = self.base.tensor(name, DType::F32, &Device::Cpu)?;
        let shape = w.dims().to_vec();
        for (lora, strength) in &self.loras {
            if let Some(d) = lora.delta(name, &shape, *strength)? {
                w = (w + d)?;
            }
        }
        let w = w.to_dtype(dtype)?;
        if dev.is_cpu() {
            Ok(w)
        } else {
            w.to_device(dev)
        }
    }
}

impl SimpleBackend for LoraBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.merged(name, dtype, dev)?;
        crate::checkpoint::source::expect_shape(self.base.path(), name, t, &s)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Some((stem, part)) = virtual_name(name) {
            if self.base.kept_as_stored(stem) {
                return match part {
                    Part::Packed => self.base.packed(stem),
                    Part::A | Part::B => {
                        let (a, b) = self.low_rank(stem)?;
                        let t = if part == Part::A { a } else { b };
                        t.to_dtype(dtype)?.to_device(dev)
                    }
                };
            }
        }
        self.merged(name, dtype, dev)
    }

    /// Also the virtual tensors of a GGUF matrix kept as stored: its blocks
    /// (`.ggml`) and, when a LoRA touches it, the stacked low-rank factors
    /// (`.lora_a`, `.lora_b`) of the runtime branch `x·Aᵀ·Bᵀ`.
    fn contains_tensor(&self, name: &str) -> bool {
        match virtual_name(name) {
            Some((stem, Part::Packed)) => self.base.kept_as_stored(stem),
            Some((stem, _)) => {
                self.base.kept_as_stored(stem) && self.loras.iter().any(|(l, _)| l.touches(stem))
            }
            None => self.base.entries().contains_key(name),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Packed,
    A,
    B,
}

/// A virtual tensor beside a weight: `<weight>.ggml`, `.lora_a`, `.lora_b`.
fn virtual_name(name: &str) -> Option<(&str, Part)> {
    use crate::ggml::{LORA_A, LORA_B, SUFFIX};
    [(SUFFIX, Part::Packed), (LORA_A, Part::A), (LORA_B, Part::B)]
        .into_iter()
        .find_map(|(suffix, part)| Some((name.strip_suffix(suffix)?, part)))
}
