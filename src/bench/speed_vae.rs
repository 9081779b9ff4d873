//! The VAE row of `baton bench speed`: a Wan 2.1 VAE decode of a
//! [1,16,3,32,32] latent (9 frames of 256x256) at the real widths (base 96),
//! random weights, baton against diffusers' `AutoencoderKLWan` on the same
//! CPU, alternating in the same run.
//!
//! The weights are seeded random values (uniform, std 1/sqrt(fan-in); norm
//! gammas around 1) written once to a temporary safetensors file in the
//! original key names; baton loads it through the runtime's VAE loader, and
//! the peer (`benches/peers/peer_vae_decode.py`) maps the names to
//! diffusers' and loads the same file, so both decode the same model and the
//! same latent. The peer also writes its video, and the row reports how far
//! baton's is from it.

use super::peer::{interleave, peer_python, run_peer_if, Row, SpeedOptions};
use crate::checkpoint::header::Header;
use crate::models::wan_vae::WanVaeConfig;
use crate::runtime::vae::{self, AnyVae};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Latent frames and size of the row (the configuration).
const FRAMES: usize = 3;
const HW: usize = 32;

/// Peer time measured in issue 19 on the 2-core AMD EPYC box (seconds),
/// shown when no peer is installed.
const RECORDED_PEER_S: f64 = 37.3;

/// xorshift64 values uniform in [-0.5, 0.5).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// Seeded random weights of a Wan 2.1 VAE in the original key names.
pub fn random_vae_tensors(cfg: &WanVaeConfig) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut out = HashMap::new();
    for (k, shape) in cfg.expected_shapes() {
        let n: usize = shape.iter().product();
        // Uniform in [-a, a) has std a / sqrt(3).
        let (base, amp) = if k.ends_with("gamma") {
            (1.0, 0.2)
        } else if k.ends_with("bias") {
            (0.0, 0.04)
        } else {
            let fan_in: usize = shape[1..].iter().product();
            (0.0, 2.0 * (3.0 / fan_in.max(1) as f32).sqrt())
        };
        let v: Vec<f32> = (0..n).map(|_| base + amp * rng.next()).collect();
        out.insert(k, Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?);
    }
    Ok(out)
}

/// The row's latent [1, 16, 3, 32, 32], seeded.
fn latent() -> candle_core::Result<Tensor> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let n = 16 * FRAMES * HW * HW;
    let v: Vec<f32> = (0..n).map(|_| 3.0 * rng.next()).collect();
    Tensor::from_vec(v, (1, 16, FRAMES, HW, HW), &Device::Cpu)
}

/// Loads the VAE written at `path` the way `load_model` does.
fn load(path: &Path) -> anyhow::Result<crate::models::wan_vae::WanVae> {
    let header = Header::read(path)?;
    let planned = vae::plan(&header, None, &Device::Cpu)?;
    match vae::load(&header, &planned, &Device::Cpu).map_err(anyhow::Error::msg)? {
        AnyVae::V21(v) => Ok(v),
        AnyVae::V22(_) => anyhow::bail!("{}: loaded as a Wan 2.2 VAE", path.display()),
    }
}

/// The VAE decode row.
pub fn vae_row(o: &SpeedOptions) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let (wpath, zpath, vpath) = (
        dir.path().join("vae.safetensors"),
        dir.path().join("latent.safetensors"),
        dir.path().join("video.safetensors"),
    );
    let cfg = WanVaeConfig::wan21();
    candle_core::safetensors::save(&random_vae_tensors(&cfg)?, &wpath)?;
    let z = latent()?;
    candle_core::safetensors::save(&HashMap::from([("latent".to_string(), z.clone())]), &zpath)?;
    let m = load(&wpath)?;
    let threads = candle_core::utils::get_num_threads();
    let py = peer_python();
    let args: Vec<String> = [
        "--weights",
        &wpath.to_string_lossy(),
        "--latent",
        &zpath.to_string_lossy(),
        "--out",
        &vpath.to_string_lossy(),
        "--threads",
        &threads.to_string(),
        "--reps",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut video = None;
    let mut row = interleave(
        format!("VAE decode f32, Wan 2.1 widths, latent [1,16,{FRAMES},{HW},{HW}] -> 9x256x256"),
        o.rounds,
        || {
            let s = Instant::now();
            let v = m.decode(&z)?;
            v.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
            let t = s.elapsed().as_secs_f64();
            video = Some(v);
            Ok(t)
        },
        || run_peer_if(&py, "peer_vae_decode.py", &args),
        RECORDED_PEER_S,
    )?;
    if let (Some(v), true) = (video, vpath.exists()) {
        let peer = candle_core::safetensors::load(&vpath, &Device::Cpu)?;
        let pv = peer
            .get("video")
            .ok_or_else(|| anyhow::anyhow!("{}: no `video`", vpath.display()))?;
        let d = (v - pv)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        row.what
            .push_str(&format!(" (outputs differ by max abs {d:.1e})"));
    }
    Ok(row)
}
