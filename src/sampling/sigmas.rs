//! Sigma schedules over ComfyUI's 1000-entry shifted flow table.
//!
//! Everything is float32 in the same operation order as ComfyUI's
//! `ModelSamplingDiscreteFlow`, so the lists are bit-identical to the ones a
//! ComfyUI workflow with the same settings uses.

/// Schedulers `schedule` accepts.
pub const SCHEDULERS: &[&str] = &["simple"];

/// Flow time shift: `shift(α, t) = (α·t) / (1 + (α−1)·t)`; identity when α == 1.
pub fn shift_sigma(alpha: f32, t: f32) -> f32 {
    if alpha == 1.0 {
        return t;
    }
    (alpha * t) / (1.0 + (alpha - 1.0) * t)
}

/// `ModelSamplingDiscreteFlow.sigmas`: entry i-1 = shift(α, ((i/1000)·1000)/1000), i = 1..=1000.
pub fn flow_table(shift: f32) -> Vec<f32> {
    (1..=1000)
        .map(|i| {
            let ts = (i as f32 / 1000.0) * 1000.0;
            shift_sigma(shift, ts / 1000.0)
        })
        .collect()
}

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

/// The full sigma list (steps + 1 values, ending in 0) for a named scheduler.
pub fn schedule(scheduler: &str, steps: usize, shift: f32) -> Result<Vec<f32>, String> {
    if !(1..=MAX_STEPS).contains(&steps) {
        return Err(format!(
            "steps must be between 1 and {MAX_STEPS}, got {steps}"
        ));
    }
    match scheduler {
        "simple" => Ok(simple(&flow_table(shift), steps)),
        other => Err(format!(
            "unknown scheduler '{other}' (available: {})",
            SCHEDULERS.join(", ")
        )),
    }
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
    if !DISCARD_PENULTIMATE.contains(&sampler) {
        return schedule(scheduler, steps, shift);
    }
    let mut s = schedule(scheduler, steps + 1, shift)?;
    let n = s.len();
    s.remove(n - 2);
    Ok(s)
}

/// The model timestep for a sigma: `σ·1000` in f32, what Wan is trained on.
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
