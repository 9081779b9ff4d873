//! Where a model's weights live: wholly resident, or partly streamed.
//!
//! A partially loaded model keeps its first blocks resident and re-reads the
//! others from the memory-mapped checkpoint at every forward. Reads are
//! double-buffered: while block i computes, a helper thread reads block i+1
//! (copying it out of the page cache, dequantising fp8, applying LoRAs), so
//! the ledger reserves two block-sized buffers when two or more blocks
//! stream. On a CUDA card the offloaded blocks are held in pinned host
//! memory instead and copied on a dedicated stream (`super::pinned`); the
//! two buffers are then the blocks in flight on the card.

use super::placement::stream_buffers;
use crate::checkpoint::CheckpointSource;
use crate::lora::backend::LoraSet;
use crate::lora::LoraBackend;
use crate::models::wan::dit::{WanBlock, WanStem};
use crate::models::wan::WanConfig;
use candle_core::{DType, Device, Result, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct WanResident {
    pub cfg: WanConfig,
    pub dtype: DType,
    pub device: Device,
    stem: WanStem,
    /// `None` = streamed from `source` at each forward.
    blocks: Vec<Option<WanBlock>>,
    /// The mapped checkpoint: streamed blocks are read from it at each
    /// forward, and LoRA rebuilds re-read the originals from it (the file is
    /// the backup; its pages are released after every read, so RSS does not
    /// hold them).
    source: Arc<CheckpointSource>,
    /// Applied LoRAs, in order; resident layers have them baked in and
    /// streamed blocks get them as they stream in.
    loras: LoraSet,
    block_bytes: Vec<u64>,
    streamed: AtomicU64,
    /// Read the next streamed block while the current one computes.
    prefetch: bool,
    /// On CUDA: the offloaded blocks in pinned host memory.
    #[cfg(feature = "cuda")]
    pinned: Option<super::pinned::PinnedBlocks>,
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
        prefetch: bool,
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
        source.finish_uploads();
        let mut model = Self {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            stem,
            blocks,
            source,
            loras: Vec::new(),
            block_bytes,
            streamed: AtomicU64::new(0),
            prefetch,
            #[cfg(feature = "cuda")]
            pinned: None,
        };
        model.pin()?;
        Ok(model)
    }

    /// On a CUDA card, (re)reads the streamed blocks, LoRAs applied, into
    /// pinned host memory; elsewhere nothing (the CPU streams from the file).
    #[cfg(feature = "cuda")]
    fn pin(&mut self) -> Result<()> {
        self.pinned = None;
        let streamed: Vec<usize> = (0..self.blocks.len())
            .filter(|&i| self.blocks[i].is_none())
            .collect();
        if !self.device.is_cuda() || streamed.is_empty() {
            return Ok(());
        }
        let vb = LoraBackend::var_builder(&self.source, &self.loras, self.dtype, &Device::Cpu);
        let pinned = super::pinned::PinnedBlocks::build(
            &self.cfg,
            self.source.path(),
            &vb,
            &streamed,
            self.blocks.len(),
            &self.device,
        )?;
        for &i in &streamed {
            self.source.release(&format!("blocks.{i}."));
        }
        self.pinned = Some(pinned);
        Ok(())
    }

    #[cfg(not(feature = "cuda"))]
    fn pin(&mut self) -> Result<()> {
        Ok(())
    }

    /// Host bytes holding offloaded blocks in page-locked memory (CUDA only).
    pub fn pinned_bytes(&self) -> u64 {
        #[cfg(feature = "cuda")]
        if let Some(p) = &self.pinned {
            return p.bytes();
        }
        0
    }

    /// Device bytes the streamed blocks pass through: the ledger's
    /// `stream_buffer` for this model (as `Runtime::plan_residency` sizes it).
    pub fn stream_buffer_bytes(&self) -> u64 {
        let streamed = self.blocks.iter().filter(|b| b.is_none()).count();
        let block = self.block_bytes.iter().copied().max().unwrap_or(0);
        stream_buffers(streamed, self.prefetch) * block
    }

    pub fn resident_blocks(&self) -> usize {
        self.blocks.iter().filter(|b| b.is_some()).count()
    }

    /// Bytes streamed in by forwards since the last call.
    pub fn take_streamed(&self) -> u64 {
        self.streamed.swap(0, Ordering::Relaxed)
    }

    /// One forward: x [B,C,F,H,W], t [B] timesteps, context [B,L,text_dim] -> velocity (f32).
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(pinned) = &self.pinned {
            return self.forward_pinned(pinned, x, t, context);
        }
        let p = self.stem.prepare(x, t, context)?;
        let n = self.blocks.len();
        let h = std::thread::scope(|scope| -> Result<Tensor> {
            let mut h = p.tokens.clone();
            // The block being read ahead, by index.
            let mut ahead: Option<(usize, std::thread::ScopedJoinHandle<'_, Result<WanBlock>>)> =
                None;
            for (i, slot) in self.blocks.iter().enumerate() {
                // Ctrl-C stops a long forward between blocks, not at its end.
                super::cancel::check_candle(|| format!("in block {i}"))?;
                let streamed;
                let block = match slot {
                    Some(block) => block,
                    None => {
                        streamed = match ahead.take() {
                            Some((j, read)) if j == i => read.join().map_err(|_| {
                                candle_core::Error::Msg(format!("reading block {i} failed"))
                            })??,
                            _ => self.read_block(i)?,
                        };
                        &streamed
                    }
                };
                if self.prefetch && ahead.is_none() {
                    if let Some(j) = (i + 1..n).find(|&j| self.blocks[j].is_none()) {
                        ahead = Some((j, scope.spawn(move || self.read_block(j))));
                    }
                }
                h = block.forward(&h, &p)?;
            }
            Ok(h)
        })?;
        self.stem.finish(&h, &p)
    }

    /// `forward` on a card: streamed blocks come from pinned memory over the
    /// copy stream, the next one queued before the current one computes.
    #[cfg(feature = "cuda")]
    fn forward_pinned(
        &self,
        pinned: &super::pinned::PinnedBlocks,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor> {
        let p = self.stem.prepare(x, t, context)?;
        let n = self.blocks.len();
        let next_streamed = |from: usize| (from..n).find(|&j| self.blocks[j].is_none());
        // The first streamed block's copy overlaps the resident blocks.
        let mut ahead = match next_streamed(0) {
            Some(j) if self.prefetch => Some((j, pinned.upload(j)?)),
            _ => None,
        };
        let mut h = p.tokens.clone();
        for (i, slot) in self.blocks.iter().enumerate() {
            super::cancel::check_candle(|| format!("in block {i}"))?;
            let streamed;
            let block = match slot {
                Some(block) => block,
                None => {
                    let up = match ahead.take() {
                        Some((j, up)) if j == i => up,
                        other => {
                            ahead = other;
                            pinned.upload(i)?
                        }
                    };
                    self.streamed.fetch_add(up.bytes, Ordering::Relaxed);
                    streamed = pinned.block(&self.cfg, i, up)?;
                    &streamed
                }
            };
            if self.prefetch && ahead.is_none() {
                if let Some(j) = next_streamed(i + 1) {
                    ahead = Some((j, pinned.upload(j)?));
                }
            }
            h = block.forward(&h, &p)?;
        }
        self.stem.finish(&h, &p)
    }

    /// Reads a streamed block from the checkpoint (with LoRAs applied) and
    /// hands its file pages back: the block's own tensors are the only copy.
    fn read_block(&self, i: usize) -> Result<WanBlock> {
        let vb = self.var_builder();
        let block = WanBlock::new(&self.cfg, vb.pp("blocks").pp(i));
        self.source.release(&format!("blocks.{i}."));
        self.streamed
            .fetch_add(self.block_bytes[i], Ordering::Relaxed);
        block
    }

    /// Weights as the model should see them now: checkpoint plus LoRAs.
    fn var_builder(&self) -> candle_nn::VarBuilder<'static> {
        LoraBackend::var_builder(&self.source, &self.loras, self.dtype, &self.device)
    }

    /// The checkpoint the model reads from.
    pub fn source(&self) -> &Arc<CheckpointSource> {
        &self.source
    }

    /// The applied LoRAs, in order, with their strengths.
    pub fn loras(&self) -> &LoraSet {
        &self.loras
    }

    /// Bytes of LoRA factors held in memory.
    pub fn lora_bytes(&self) -> u64 {
        self.loras.iter().map(|(l, _)| l.bytes).sum()
    }

    /// Replaces the LoRA set and rebuilds every resident layer either set
    /// touches from the checkpoint, so the result is exactly what a fresh
    /// load with the new set would give (removing a LoRA restores the
    /// original bits). All or nothing: on failure the old set is rebuilt.
    /// Layers are rebuilt one at a time, so at most one layer is held twice.
    pub fn set_loras(&mut self, loras: LoraSet) -> Result<()> {
        let touched: Vec<String> = self
            .loras
            .iter()
            .chain(&loras)
            .flat_map(|(l, _)| l.targets().collect::<Vec<_>>())
            .collect();
        let resident: Vec<bool> = self.blocks.iter().map(Option::is_some).collect();
        let old = std::mem::replace(&mut self.loras, loras);
        if let Err(e) = self.rebuild(&touched, &resident) {
            self.loras = old;
            // The old set built before, from the same file; if even that
            // fails the model is unusable, and the first error says why.
            if let Err(again) = self.rebuild(&touched, &resident) {
                tracing::error!("restoring the previous LoRA set failed too: {again}");
            }
            return Err(e);
        }
        Ok(())
    }

    fn rebuild(&mut self, touched: &[String], resident: &[bool]) -> Result<()> {
        let vb = self.var_builder();
        if touched.iter().any(|n| !n.starts_with("blocks.")) {
            self.stem = WanStem::new(&self.cfg, vb.clone())?;
            self.source.release("");
        }
        for (i, &is_resident) in resident.iter().enumerate() {
            let prefix = format!("blocks.{i}.");
            if !is_resident || !touched.iter().any(|n| n.starts_with(&prefix)) {
                continue;
            }
            // Drop the old layer first: the peak stays one layer, not two.
            self.blocks[i] = None;
            let built = WanBlock::new(&self.cfg, vb.pp("blocks").pp(i));
            self.source.release(&prefix);
            self.blocks[i] = Some(built?);
        }
        self.pin()
    }

    /// Rebuilds every resident weight on `dev` from the checkpoint (LoRAs
    /// re-applied), dropping each old layer before its new copy is read, and
    /// re-pins the streamed blocks if `dev` is a card: `offload_model` on a
    /// card moves the weights to host memory this way and its reload moves
    /// them back. On failure the model is rebuilt where it was.
    pub fn relocate(&mut self, dev: &Device) -> Result<()> {
        if self.device.same_device(dev) {
            return Ok(());
        }
        let old = std::mem::replace(&mut self.device, dev.clone());
        // Every layer: "stem" is not under "blocks.", the rest name each block.
        let everything: Vec<String> = std::iter::once("stem".to_string())
            .chain((0..self.blocks.len()).map(|i| format!("blocks.{i}.all")))
            .collect();
        let resident: Vec<bool> = self.blocks.iter().map(Option::is_some).collect();
        if let Err(e) = self.rebuild(&everything, &resident) {
            self.device = old;
            if let Err(again) = self.rebuild(&everything, &resident) {
                tracing::error!("moving the model back failed too: {again}");
            }
            return Err(e);
        }
        Ok(())
    }

    /// A resident linear weight by canonical name (`blocks.0.ffn.0.weight`),
    /// as the model holds it; `None` for streamed blocks and other tensors.
    pub fn resident_weight(&self, name: &str) -> Option<Tensor> {
        let rest = name.strip_prefix("blocks.")?;
        let (i, rest) = rest.split_once('.')?;
        let block = self.blocks.get(i.parse::<usize>().ok()?)?.as_ref()?;
        block.linear_weight(rest).cloned()
    }
}
