//! Model architectures, each a candle module built from a `VarBuilder`.
pub mod wan;
