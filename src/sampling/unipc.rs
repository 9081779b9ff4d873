//! UniPC: ComfyUI's `uni_pc`/`uni_pc_bh2` and diffusers' flow UniPC (`unipc_flow`).

use super::samplers::{Hooks, SolverState};
use candle_core::{Result, Tensor};

pub fn comfy_bh1(_h: &mut Hooks, _x: Tensor, _s: &[f32], _st: &mut SolverState) -> Result<Tensor> {
    candle_core::bail!("uni_pc is not implemented yet")
}

pub fn comfy_bh2(_h: &mut Hooks, _x: Tensor, _s: &[f32], _st: &mut SolverState) -> Result<Tensor> {
    candle_core::bail!("uni_pc_bh2 is not implemented yet")
}

pub fn flow(_h: &mut Hooks, _x: Tensor, _s: &[f32], _st: &mut SolverState) -> Result<Tensor> {
    candle_core::bail!("unipc_flow is not implemented yet")
}
