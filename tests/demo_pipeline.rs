//! The README's main job: `baton run scripts/demo.rhai`. The sequential way
//! must offload nothing and peak lower in RSS than the both-loaded way; both
//! figures are measured by the script (ledger and /proc), not assumed here.
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
    let run = common::baton_run(
        "scripts/demo.rhai".as_ref(),
        Some(out_dir.path()),
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
}
