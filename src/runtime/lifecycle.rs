//! A loaded model's life after the load: `delete_model` frees it for real,
//! `offload_model` moves it to host memory as ComfyUI's unload does, and the
//! next use brings it back. Each step is a ledger transition.

use super::error::{plain_error, Result, RuntimeError};
use super::memstat;
use super::registry::{LoadedModel, ModelId, Weights};
use super::residency::WanResident;
use super::runtime::Runtime;
use super::size::mib;
use candle_core::Device;

impl Runtime {
    /// Drops every reference to the model's weights, device and host.
    pub fn delete_model(&mut self, id: ModelId, at: &str) -> Result<()> {
        let m = self
            .registry
            .remove(id, at)
            .ok_or_else(|| RuntimeError::Model(self.registry.get(id).err().unwrap_or_default()))?;
        let entry = self.ledger.release(id).unwrap_or_default();
        let name = m.name.clone();
        drop(m);
        memstat::trim();
        let freed = format!(
            "freed {} device, {} host",
            mib(entry.resident()),
            mib(entry.host)
        );
        tracing::info!("deleted {name}: {freed}");
        self.record(at, "delete", &name, 0, freed);
        Ok(())
    }

    /// ComfyUI-style unload: frees the device bytes but keeps the weights in
    /// host memory, so RAM is not freed. The next use brings it back.
    pub fn offload_model(&mut self, id: ModelId, at: &str) -> Result<()> {
        let m = self.registry.get_mut(id).map_err(RuntimeError::Model)?;
        if !self.ledger.on_device(id) {
            return Ok(());
        }
        // On the CPU device and host memory are one; on a card the weights
        // really move (see `WanResident::relocate`).
        if !self.device.is_cpu() {
            match &mut m.weights {
                Weights::Dit(d) => d
                    .relocate(&Device::Cpu)
                    .map_err(|e| RuntimeError::Model(plain_error(&e)))?,
                // A scripted model has nothing on the device to move.
                Weights::Planned(_) | Weights::Scripted(_) => {}
                _ => {
                    return Err(RuntimeError::Input(format!(
                        "offload_model('{}'): on a card only diffusion models move to host \
                         memory; delete_model frees a text encoder or a VAE",
                        m.name
                    )))
                }
            }
        }
        let name = m.name.clone();
        let host = self.ledger.offload(id).unwrap_or(0);
        let note = format!(
            "{} device freed, {} still held in RAM",
            mib(host),
            mib(host)
        );
        tracing::info!("offloaded {name} to host: {note}");
        self.record(at, "offload", &name, 0, note);
        Ok(())
    }

    /// The model, back on the device if it was offloaded (and counted so),
    /// for a verb about to compute with it at script position `at`.
    pub fn use_model(&mut self, id: ModelId, at: &str) -> Result<&LoadedModel> {
        self.ensure_on_device(id, at)?;
        self.model(id)
    }

    /// Brings an offloaded model back onto the device before use.
    pub(super) fn ensure_on_device(&mut self, id: ModelId, at: &str) -> Result<()> {
        let m = self.registry.get(id).map_err(RuntimeError::Model)?;
        if self.ledger.on_device(id) {
            return Ok(());
        }
        let host = self.ledger.get(id).map_or(0, |e| e.host);
        let free = self.ledger.free();
        // The stream buffers were given up with the device bytes.
        let stream_buffer = m.dit().map(WanResident::stream_buffer_bytes).unwrap_or(0);
        let needed = host + stream_buffer;
        if needed > free {
            return Err(RuntimeError::Budget(format!(
                "'{}' was offloaded and needs {} back on the device, but only {} is free ({})",
                m.name,
                mib(needed),
                mib(free),
                self.ledger.summary()
            )));
        }
        let m = self.registry.get_mut(id).map_err(RuntimeError::Model)?;
        let mut pinned = 0;
        if !self.device.is_cpu() {
            if let Weights::Dit(d) = &mut m.weights {
                d.relocate(&self.device)
                    .map_err(|e| RuntimeError::Model(plain_error(&e)))?;
                pinned = d.pinned_bytes();
            }
        }
        let name = m.name.clone();
        let back = self.ledger.reload(id, stream_buffer, pinned).unwrap_or(0);
        self.record(at, "reload", &name, 0, mib(back));
        Ok(())
    }
}
