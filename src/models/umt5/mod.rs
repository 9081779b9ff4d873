//! umT5-XXL, the text encoder of every Wan 2.x model, and its SentencePiece
//! tokenizer.
//!
//! Library pieces only: key layouts and config inference for `load_model`,
//! the encoder as a candle module, the tokenizer from raw `spiece.model`
//! bytes, Wan's prompt cleaning, and the context shaping the pipelines apply
//! before the DiT sees the embeddings.
pub mod clean;
pub mod config;
pub mod encoder;
pub mod layout;
pub mod spm;
pub mod tokenizer;
mod widen;

pub use clean::clean_prompt;
pub use config::UmT5Config;
pub use encoder::{pipeline_context, Prepared, UmT5Block, UmT5Encoder, UmT5Stem};
pub use tokenizer::{Tokens, UmT5Tokenizer, MAX_TOKENS};
