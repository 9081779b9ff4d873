//! The README's main job: `baton run scripts/demo.rhai`. The sequential way
//! must offload nothing and peak lower in RSS than the both-loaded way; both
//! figures are measured by the script (ledger and /proc), not assumed here.
//! The run is traced, and `baton plan`'s prediction must match it.
mod common;

fn number_after(line: &str, key: &str) -> f64 {
    let rest = &line[line
        .find(key)
        .unwrap_or_else(|| panic!("'{key}' not in: {line}"))
        + key.len()..];
    rest.trim_start()
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after '{key}' in: {line}"))
}

#[test]
fn demo_runs_both_ways_and_sequential_wins() {
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let trace_path = out_dir.path().join("demo_trace.json");
    let run = common::baton_run_traced(
        "scripts/demo.rhai",
        out_dir.path(),
        &trace_path,
        Some(cache.path()),
    );
    run.assert_ok();
    let (stdout, stderr) = (&run.stdout, &run.stderr);
    println!("{stdout}");

    // The log says how much the partial load offloaded.
    assert!(
        stderr.contains("loaded low partially") && stderr.contains("MiB offloaded"),
        "{stderr}"
    );
    let comfy = stdout
        .lines()
        .find(|l| l.contains("ComfyUI way :"))
        .expect("summary line");
    let seq = stdout
        .lines()
        .find(|l| l.contains("sequential  :"))
        .expect("summary line");
    assert!(number_after(comfy, "offloaded") > 0.0, "{comfy}");
    assert_eq!(number_after(seq, "offloaded"), 0.0, "{seq}");
    let (p_comfy, p_seq) = (
        number_after(comfy, "peak RSS"),
        number_after(seq, "peak RSS"),
    );
    assert!(
        p_seq < p_comfy,
        "sequential peak {p_seq} MiB should be below {p_comfy} MiB"
    );
    // Streaming changes where weights come from, not the numbers.
    let same = stdout
        .lines()
        .find(|l| l.contains("same result"))
        .expect("result line");
    assert!(number_after(same, "difference") < 1e-6, "{same}");
    assert!(out_dir.path().join("demo_latent.safetensors").exists());

    // The plan predicts both halves: ComfyUI way up to the delete of 'low'
    // (line 44), sequential after it.
    use common::plan::{assert_close, measured_peak, plan_json, predicted_peak, read_json};
    let trace = read_json(&trace_path);
    let plan = plan_json("scripts/demo.rhai", cache.path());
    let kinds = |v: &serde_json::Value| -> Vec<String> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{} {} {}", e["at"], e["kind"], e["model"]))
            .collect()
    };
    // The dry run goes through exactly the events the real one did.
    assert_eq!(kinds(&trace), kinds(&plan["trace"]));
    let events = trace["events"].as_array().unwrap();
    let split = events
        .iter()
        .position(|e| e["at"] == "scripts/demo.rhai:44")
        .expect("delete low");
    let t_split = events[split]["t"].as_f64().unwrap();
    let t_end = events.last().unwrap()["t"].as_f64().unwrap() + 1.0;
    assert_close(
        "ComfyUI way",
        predicted_peak(&plan, 0..split + 1),
        measured_peak(&trace, 0.0, t_split),
    );
    let seq_measured = measured_peak(&trace, t_split, t_end);
    assert_close(
        "sequential",
        predicted_peak(&plan, split + 1..events.len()),
        seq_measured,
    );
    // Issue 5's bound: the sequential run peaks within 15% of the largest
    // model plus its working memory (everything else, runtime included,
    // must fit in the 15%).
    let planned = plan["trace"]["events"].as_array().unwrap();
    let model_plus_work = planned[split + 1..]
        .iter()
        .map(|e| common::plan::held(e, "resident") + e["activations"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        seq_measured as f64 <= 1.15 * model_plus_work as f64,
        "sequential peak {seq_measured} > 1.15 x (largest model + activations) {model_plus_work}"
    );
}
