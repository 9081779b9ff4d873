//! The Wan 2.1 VAE (`WanVAE_` / diffusers `AutoencoderKLWan`), also the VAE
//! of Wan 2.2 A14B: config and checkpoint recognition, key layouts, the causal
//! 3-D conv, and the chunked encoder/decoder.
pub mod config;
pub mod conv;
pub mod cpu_conv;
pub mod formats;
pub mod layout;
pub mod layout22;
pub mod model;
pub mod model22;

pub use config::{infer, is_wan_vae, WanVaeConfig, LATENTS_MEAN, LATENTS_STD};
pub use layout22::{VaeKind, Wan22VaeConfig};
pub use model::{denormalize, normalize, DecodeChunks, WanVae};
pub use model22::Wan22Vae;
