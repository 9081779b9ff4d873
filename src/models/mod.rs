//! Model architectures, each a candle module built from a `VarBuilder`.
pub mod umt5;
pub mod wan;
pub mod wan_vae;
