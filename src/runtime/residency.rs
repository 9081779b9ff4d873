//! Where a model's weights live: wholly resident, or partly streamed.
//!
//! A partially loaded model keeps its first blocks resident and re-reads the
//! others from the memory-mapped checkpoint at every forward, one block at a
//! time, into a single block-sized buffer that the ledger reserves.

use crate::checkpoint::CheckpointSource;
use crate::models::wan::dit::{WanBlock, WanStem};
use crate::models::wan::WanConfig;
use candle_core::{DType, Device, Result, Tensor};
use std::cell::Cell;
use std::sync::Arc;

pub struct WanResident {
    pub cfg: WanConfig,
    pub dtype: DType,
    pub device: Device,
    stem: WanStem,
    /// `None` = streamed from `source` at each forward.
    blocks: Vec<Option<WanBlock>>,
    /// Kept open only while some block streams.
    source: Option<Arc<CheckpointSource>>,
    block_bytes: Vec<u64>,
    streamed: Cell<u64>,
}

impl WanResident {
    /// Builds the model with the first `resident_blocks` blocks resident.
    pub fn load(
        cfg: &WanConfig,
        source: Arc<CheckpointSource>,
        dtype: DType,
        device: &Device,
        resident_blocks: usize,
        block_bytes: Vec<u64>,
    ) -> Result<Self> {
        let vb = source.var_builder(dtype, device);
        let stem = WanStem::new(cfg, vb.clone())?;
        // Drop file pages as soon as they are copied, so a load never holds
        // the mapped file and the resident copy at once.
        source.release("");
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            if i < resident_blocks {
                blocks.push(Some(WanBlock::new(cfg, vb.pp("blocks").pp(i))?));
            } else {
                if i == 0 {
                    // Nothing resident: build block 0 once so the model code
                    // itself has checked one block's keys and shapes.
                    drop(WanBlock::new(cfg, vb.pp("blocks").pp(0))?);
                }
                // A streamed block must look exactly like block 0, checked from
                // the header alone, so a bad file fails now (not mid-sampling)
                // without reading the offloaded weights at load time.
                source.check_same_keys("blocks.0.", &format!("blocks.{i}."))?;
                blocks.push(None);
            }
            source.release(&format!("blocks.{i}."));
        }
        let streams = resident_blocks < cfg.num_layers;
        Ok(Self {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            stem,
            blocks,
            source: streams.then_some(source),
            block_bytes,
            streamed: Cell::new(0),
        })
    }

    pub fn resident_blocks(&self) -> usize {
        self.blocks.iter().filter(|b| b.is_some()).count()
    }

    /// Bytes streamed in by forwards since the last call.
    pub fn take_streamed(&self) -> u64 {
        self.streamed.replace(0)
    }

    /// One forward: x [B,C,F,H,W], t [B] timesteps, context [B,L,text_dim] -> velocity (f32).
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Result<Tensor> {
        let p = self.stem.prepare(x, t, context)?;
        let mut h = p.tokens.clone();
        for (i, slot) in self.blocks.iter().enumerate() {
            // Ctrl-C stops a long forward between blocks, not at its end.
            super::cancel::check_candle(|| format!("in block {i}"))?;
            h = match slot {
                Some(block) => block.forward(&h, &p)?,
                None => self.streamed_block(i, |b| b.forward(&h, &p))?,
            };
        }
        self.stem.finish(&h, &p)
    }

    fn streamed_block(
        &self,
        i: usize,
        f: impl FnOnce(&WanBlock) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let source = self.source.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(format!("block {i} is neither resident nor streamable"))
        })?;
        let vb = source.var_builder(self.dtype, &self.device);
        let block = WanBlock::new(&self.cfg, vb.pp("blocks").pp(i))?;
        let out = f(&block);
        drop(block);
        source.release(&format!("blocks.{i}."));
        self.streamed.set(self.streamed.get() + self.block_bytes[i]);
        out
    }
}
