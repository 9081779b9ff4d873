//! Sigma schedules for flow models, by scheduler name.
//!
//! ComfyUI's schedulers work over its 1000-entry shifted flow table, in
//! float32 and in the same operation order as ComfyUI's
//! `ModelSamplingDiscreteFlow`, so the lists match the ones a ComfyUI
//! workflow with the same settings uses (bit for bit except where torch's
//! float32 exp/tan are not correctly rounded). The `fm_*`/`wan_*` schedules
//! are diffusers' and the original Wan repo's. The formulas themselves live
//! in `schedules`.

use super::schedules;
pub use super::schedules::{flow_table, shift_sigma};

/// Schedulers `schedule` accepts: ComfyUI's names, then `fm_euler`
/// (diffusers FlowMatchEulerDiscreteScheduler), `fm_unipc` (diffusers
/// UniPCMultistepScheduler with flow sigmas) and `wan_unipc` (the original
/// Wan FlowUniPCMultistepScheduler).
pub const SCHEDULERS: &[&str] = &[
    "simple",
    "normal",
    "karras",
    "exponential",
    "sgm_uniform",
    "beta",
    "linear_quadratic",
    "ddim_uniform",
    "kl_optimal",
    "fm_euler",
    "fm_unipc",
    "wan_unipc",
];

/// ComfyUI `simple`: evenly spaced table entries from the top, then a terminal 0.
pub fn simple(table: &[f32], steps: usize) -> Vec<f32> {
    let ss = table.len() as f64 / steps as f64;
    let mut sigmas: Vec<f32> = (0..steps)
        .map(|x| table[table.len() - 1 - (x as f64 * ss) as usize])
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// More steps than any schedule needs; also keeps a typo from allocating gigabytes.
pub const MAX_STEPS: usize = 10_000;

fn check_steps(steps: usize) -> Result<(), String> {
    if (1..=MAX_STEPS).contains(&steps) {
        Ok(())
    } else {
        Err(format!(
            "steps must be between 1 and {MAX_STEPS}, got {steps}"
        ))
    }
}

/// The full sigma list for a named scheduler, ending in 0: steps + 1 values,
/// except where ComfyUI itself gives another count (`ddim_uniform` rounds its
/// stride, `beta` merges quantiles that land on the same table entry).
pub fn schedule(scheduler: &str, steps: usize, shift: f32) -> Result<Vec<f32>, String> {
    check_steps(steps)?;
    unchecked(scheduler, steps, shift)
}

/// `schedule` without the step-count check, so `for_sampler` can ask for one
/// step more than `MAX_STEPS`.
fn unchecked(scheduler: &str, steps: usize, shift: f32) -> Result<Vec<f32>, String> {
    let table = || flow_table(shift);
    Ok(match scheduler {
        "simple" => simple(&table(), steps),
        "normal" => schedules::normal(&table(), steps, shift),
        "karras" => schedules::karras(&table(), steps),
        "exponential" => schedules::exponential(&table(), steps),
        "sgm_uniform" => schedules::sgm_uniform(&table(), steps, shift),
        "beta" => schedules::beta(&table(), steps),
        "linear_quadratic" => schedules::linear_quadratic(&table(), steps),
        "ddim_uniform" => schedules::ddim_uniform(&table(), steps),
        "kl_optimal" => schedules::kl_optimal(&table(), steps),
        "fm_euler" => schedules::fm_euler(steps, shift),
        "fm_unipc" => schedules::fm_unipc(steps, shift),
        "wan_unipc" => schedules::wan_unipc(steps, shift),
        other => {
            return Err(format!(
                "unknown scheduler '{other}' (available: {})",
                SCHEDULERS.join(", ")
            ))
        }
    })
}

/// Samplers for which ComfyUI's KSampler computes steps + 1 sigmas and drops
/// the second-to-last (`discard_penultimate_samplers`).
pub const DISCARD_PENULTIMATE: &[&str] = &["dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"];

/// The full sigma list KSampler hands `sampler` for a named scheduler.
pub fn for_sampler(
    scheduler: &str,
    steps: usize,
    shift: f32,
    sampler: &str,
) -> Result<Vec<f32>, String> {
    check_steps(steps)?;
    if !DISCARD_PENULTIMATE.contains(&sampler) {
        return unchecked(scheduler, steps, shift);
    }
    let mut s = unchecked(scheduler, steps + 1, shift)?;
    let n = s.len();
    // Every schedule has at least one sigma before its terminal 0.
    s.remove(n - 2);
    Ok(s)
}

/// The model timestep for a sigma: `σ·1000` in f32, what Wan is trained on.
/// diffusers' `fm_euler` feeds exactly this too (its timesteps are the f32
/// sigmas times 1000).
pub fn timestep(sigma: f32) -> f32 {
    sigma * 1000.0
}

/// The first step that belongs to the low-noise expert under the diffusers /
/// official Wan 2.2 rule: step i runs on the high-noise expert while its
/// timestep `σ_i·1000` is at least `ratio·1000` (0.875 for T2V, 0.9 for I2V).
/// Returns the number of high-noise steps, between 0 and `sigmas.len() − 1`.
pub fn boundary_step(sigmas: &[f32], ratio: f64) -> usize {
    let boundary = ratio * 1000.0;
    let steps = sigmas.len().saturating_sub(1);
    sigmas[..steps]
        .iter()
        .take_while(|&&s| timestep(s) as f64 >= boundary)
        .count()
}

/// The integer timesteps diffusers' UniPC (`fm_unipc`) and the original Wan
/// UniPC (`wan_unipc`) feed the model, one per step: `int64(σ·1000)`
/// truncated from the *float64* sigma, before it is rounded to f32.
///
/// `trunc(timestep(σ_f32))` agrees for every fixture case, but not always:
/// when σ·1000 lies just below an integer the f32 rounding of σ can cross it
/// (`fm_unipc`, shift 1, 3 steps: σ = 0.33399999999999996 gives 333 here and
/// 334 from the f32 sigma). No function of the f32 sigma alone can tell
/// these apart, hence the whole list from the schedule.
pub fn integer_timesteps(scheduler: &str, steps: usize, shift: f32) -> Result<Vec<f32>, String> {
    check_steps(steps)?;
    match scheduler {
        "fm_unipc" => Ok(schedules::unipc_int_timesteps(false, steps, shift)),
        "wan_unipc" => Ok(schedules::unipc_int_timesteps(true, steps, shift)),
        other => Err(format!(
            "scheduler '{other}' has no integer timesteps (only fm_unipc and wan_unipc)"
        )),
    }
}
