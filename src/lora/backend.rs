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
        self.merged(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.base.entries().contains_key(name)
    }
}
