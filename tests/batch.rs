//! `baton batch`: shards run at once (one killed mid-item and rerun) give
//! every item once, whole, bit-identical to `baton run`; stage-major loads
//! each model once per shard; bad inputs fail before anything is written;
//! failed items are retried, recorded and summed up by `batch status`; the
//! Slurm and Kubernetes files drive the same command.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn recipe() -> PathBuf {
    repo().join("scripts/wan22_t2v.rhai")
}

/// Tiny settings: 32x32, one frame, 4 steps (3 high, 1 low), no CFG pass.
const SMALL: &[&str] = &[
    "--set",
    "width=32",
    "--set",
    "height=32",
    "--set",
    "frames=1",
    "--set",
    "steps=4",
    "--set",
    "cfg_high=1.0",
    "--set",
    "cfg_low=1.0",
];

/// A baton command in `cwd` with no shard in its environment.
fn baton(cwd: &Path) -> Command {
    program(env!("CARGO_BIN_EXE_baton"), cwd)
}

/// `prog` in `cwd` with no shard in its environment.
fn program(prog: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
    let mut c = Command::new(prog);
    c.current_dir(cwd);
    for v in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_COUNT",
        "JOB_COMPLETION_INDEX",
    ] {
        c.env_remove(v);
    }
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn batch_args<'a>(jobs: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<String> {
    let r = recipe().display().to_string();
    let mut a: Vec<String> = vec![
        "batch".into(),
        r,
        "--jobs".into(),
        jobs.into(),
        "--out".into(),
        out.into(),
    ];
    a.extend(SMALL.iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn write_jobs(dir: &Path, n: usize) -> Vec<(String, i64, String)> {
    let mut lines = String::new();
    let mut items = Vec::new();
    for i in 0..n {
        let (id, seed, prompt) = (
            format!("clip-{i:02}"),
            100 + i as i64,
            format!("a fox, take {i}"),
        );
        lines.push_str(&format!(
            "{{\"id\":\"{id}\",\"seed\":{seed},\"prompt\":\"{prompt}\"}}\n"
        ));
        items.push((id, seed, prompt));
    }
    std::fs::write(dir.join("jobs.jsonl"), lines).unwrap();
    items
}

fn latent(path: &Path) -> Vec<u32> {
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    t["latent"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|f| f.to_bits())
        .collect()
}

/// `baton run` of the recipe with one item's parameters: its latent.
fn reference(cwd: &Path, seed: i64, prompt: &str) -> Vec<u32> {
    let out = cwd.join(format!("ref-{seed}"));
    let o = baton(cwd)
        .args([
            "run",
            &recipe().display().to_string(),
            "--out",
            &out.display().to_string(),
        ])
        .args(SMALL)
        .args([
            "--set",
            &format!("seed={seed}"),
            "--set",
            &format!("prompt={prompt}"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    latent(&out.join("wan22_t2v_latent.safetensors"))
}

fn loads_logged(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(" loaded ") && l.contains(" MiB resident,"))
        .count()
}

/// Hidden entries (temporary dirs, locks) left in the batch directory.
fn hidden(out: &Path) -> Vec<String> {
    std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn three_shards_one_killed_and_rerun_match_baton_run() {
    let d = tempfile::tempdir().unwrap();
    let cwd = d.path();
    let items = write_jobs(cwd, 9);
    // References first (this also warms the built-in model cache).
    let refs: Vec<Vec<u32>> = items
        .iter()
        .map(|(_, s, p)| reference(cwd, *s, p))
        .collect();

    let logs: Vec<PathBuf> = (0..3).map(|i| cwd.join(format!("shard{i}.log"))).collect();
    let mut kids: Vec<std::process::Child> = (0..3)
        .map(|i| {
            baton(cwd)
                .args(batch_args(
                    "jobs.jsonl",
                    "out",
                    &["--shard", &format!("{i}/3")],
                ))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&logs[i]).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    // Kill shard 1 once it is working on its items (stage-major: all three
    // are in flight until the VAE stage ends).
    let t0 = Instant::now();
    loop {
        let log = std::fs::read_to_string(&logs[1]).unwrap_or_default();
        if log.lines().any(|l| l.starts_with("item ")) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "shard 1 never started: {log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    kids[1].kill().unwrap(); // SIGKILL
    kids[1].wait().unwrap();
    let out = cwd.join("out");
    let left = hidden(&out);
    assert!(
        left.iter().any(|n| n.starts_with(".lock-")) && left.iter().any(|n| n.starts_with(".tmp-")),
        "the kill left its locks and temporary dirs: {left:?}"
    );
    for i in [0, 2] {
        let st = kids[i].wait().unwrap();
        let log = std::fs::read_to_string(&logs[i]).unwrap();
        assert!(st.success(), "shard {i}: {log}");
        // Stage-major: 4 model loads for the shard's 3 items, not 12.
        assert_eq!(loads_logged(&log), 4, "shard {i}: {log}");
        assert!(
            log.contains("3 done") && log.contains("4 model loads (stage-major)"),
            "{log}"
        );
        for l in ["text", "high", "low", "decode"] {
            assert_eq!(
                log.lines()
                    .filter(|x| x.starts_with("item ") && x.contains(&format!(" {l} ")))
                    .count(),
                3,
                "{log}"
            );
        }
    }
    // Shard 1's items are not there: none was half written.
    for (k, (id, _, _)) in items.iter().enumerate() {
        assert_eq!(out.join(id).exists(), k % 3 != 1, "{id}");
    }
    let o = baton(cwd)
        .args(batch_args("jobs.jsonl", "out", &["--shard", "1/3"]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("3 done, 0 failed"), "{}", text(&o));

    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = items.iter().map(|(id, _, _)| id.clone()).collect();
    want.push("batch.json".into());
    want.sort();
    assert_eq!(names, want, "every id once, no temporary dirs or locks");
    for ((id, seed, _), r) in items.iter().zip(&refs) {
        let got = latent(&out.join(id).join("wan22_t2v_latent.safetensors"));
        assert!(got == *r, "{id}: latent differs from baton run");
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(id).join("run.json")).unwrap())
                .unwrap();
        assert_eq!(m["status"], "ok");
        assert_eq!(m["parameters"]["seed"], *seed);
        assert_eq!(m["seeds"], serde_json::json!([seed]));
        assert_eq!(m["batch"]["shards"], 3);
    }
    let s = baton(cwd)
        .args(["batch", "status", "out"])
        .output()
        .unwrap();
    let s = text(&s);
    assert!(
        s.contains("9 items: 9 done, 0 failed, 0 running, 0 pending"),
        "{s}"
    );
    assert!(
        s.contains("shard 1/3: 3 done") && s.contains("videos per hour"),
        "{s}"
    );
    // A rerun of everything skips every item.
    let o = baton(cwd)
        .args(batch_args("jobs.jsonl", "out", &[]))
        .output()
        .unwrap();
    assert!(
        o.status.success() && text(&o).contains("9 already done"),
        "{}",
        text(&o)
    );
}

#[test]
fn item_by_item_and_stage_major_give_the_same_latents() {
    let d = tempfile::tempdir().unwrap();
    let cwd = d.path();
    let items = write_jobs(cwd, 3);
    let sm = baton(cwd)
        .args(batch_args("jobs.jsonl", "sm", &[]))
        .output()
        .unwrap();
    assert!(sm.status.success(), "{}", text(&sm));
    let im = baton(cwd)
        .args(batch_args("jobs.jsonl", "im", &["--item-major"]))
        .output()
        .unwrap();
    assert!(im.status.success(), "{}", text(&im));
    // --stage-items 2: groups of at most two items, each loading every model.
    let g2 = baton(cwd)
        .args(batch_args("jobs.jsonl", "g2", &["--stage-items", "2"]))
        .output()
        .unwrap();
    assert!(g2.status.success(), "{}", text(&g2));
    assert_eq!(loads_logged(&text(&g2)), 8, "{}", text(&g2));
    assert_eq!(loads_logged(&text(&sm)), 4, "{}", text(&sm));
    assert_eq!(loads_logged(&text(&im)), 12, "{}", text(&im));
    for (id, _, _) in &items {
        let a = latent(&cwd.join("sm").join(id).join("wan22_t2v_latent.safetensors"));
        let b = latent(&cwd.join("im").join(id).join("wan22_t2v_latent.safetensors"));
        assert!(a == b, "{id}");
        let c = latent(&cwd.join("g2").join(id).join("wan22_t2v_latent.safetensors"));
        assert!(a == c, "{id}");
        let read = |dir: &str| -> serde_json::Value {
            serde_json::from_str(
                &std::fs::read_to_string(cwd.join(dir).join(id).join("run.json")).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(read("sm")["parameters"], read("im")["parameters"], "{id}");
        assert_eq!(read("sm")["samples"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn failed_items_are_retried_recorded_and_redone() {
    let d = tempfile::tempdir().unwrap();
    let cwd = d.path();
    std::fs::write(
        cwd.join("jobs.csv"),
        "id,seed,text\nok-a,1,\nbad,2,no-such-umt5.safetensors\nok-b,3,\n",
    )
    .unwrap();
    let o = baton(cwd)
        .args(batch_args("jobs.csv", "out", &["--retries", "1"]))
        .output()
        .unwrap();
    let log = text(&o);
    assert!(!o.status.success(), "an item failed: {log}");
    assert!(log.contains("1 of 3 items failed"), "{log}");
    assert!(
        log.contains("item bad failed (attempt 1), retrying"),
        "{log}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cwd.join("out/bad/run.json")).unwrap())
            .unwrap();
    assert_eq!(m["status"], "error");
    assert!(m["error"].as_str().unwrap().contains("no-such-umt5"), "{m}");
    assert_eq!(m["batch"]["attempts"], 2);
    for id in ["ok-a", "ok-b"] {
        assert!(cwd
            .join("out")
            .join(id)
            .join("wan22_t2v_latent.safetensors")
            .exists());
    }
    let s = text(
        &baton(cwd)
            .args(["batch", "status", "out"])
            .output()
            .unwrap(),
    );
    assert!(
        s.contains("3 items: 2 done, 1 failed, 0 running, 0 pending"),
        "{s}"
    );
    assert!(
        s.contains("  bad: text: ") && s.contains("no-such-umt5"),
        "{s}"
    );
    // Fixed: the rerun redoes the failed item only.
    std::fs::write(
        cwd.join("jobs.csv"),
        "id,seed,text\nok-a,1,\nbad,2,\nok-b,3,\n",
    )
    .unwrap();
    let o = baton(cwd)
        .args(batch_args("jobs.csv", "out", &[]))
        .output()
        .unwrap();
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("1 done, 0 failed, 2 already done"), "{log}");
    assert!(hidden(&cwd.join("out")).is_empty());
}

#[test]
fn bad_inputs_fail_naming_the_cause_and_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let cwd = d.path();
    let cases: &[(&str, &str, &[&str], &str)] = &[
        (
            "malformed.jsonl",
            "{\"seed\":1}\n{\"seed\": 2,\n",
            &[],
            "malformed.jsonl:2: not a JSON object",
        ),
        (
            "unknown.jsonl",
            "{\"seed\":1}\n{\"colour\":\"red\"}\n",
            &[],
            "unknown.jsonl:2: unknown parameter 'colour'",
        ),
        (
            "type.csv",
            "id,steps\na,four\n",
            &[],
            "type.csv:2: 'steps' must be an integer",
        ),
        (
            "dup.jsonl",
            "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"a\"}\n",
            &[],
            "dup.jsonl:3: duplicate id 'a' (first on line 1)",
        ),
        (
            "ok.jsonl",
            "{\"seed\":1}\n",
            &["--shard", "3/2"],
            "--shard 3/2: shard 3/2: the index must be below the count",
        ),
        (
            "ok.jsonl",
            "{\"seed\":1}\n",
            &["--set", "steps=x"],
            "--set steps=x is not an integer",
        ),
    ];
    for (name, body, extra, want) in cases {
        std::fs::write(cwd.join(name), body).unwrap();
        let o = baton(cwd)
            .args(batch_args(name, "out", extra))
            .output()
            .unwrap();
        let t = text(&o);
        assert!(
            !o.status.success() && t.contains(want),
            "{name}: want '{want}' in: {t}"
        );
        assert!(!cwd.join("out").exists(), "{name}: nothing written");
    }
    // An --out that cannot be created (a file is in the way).
    std::fs::write(cwd.join("file"), "x").unwrap();
    let o = baton(cwd)
        .args(batch_args("ok.jsonl", "file/out", &[]))
        .output()
        .unwrap();
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("cannot create --out file/out"),
        "{t}"
    );
    assert_eq!(std::fs::read_to_string(cwd.join("file")).unwrap(), "x");
    // JOB_COMPLETION_INDEX needs --shards.
    let o = baton(cwd)
        .args(batch_args("ok.jsonl", "out", &[]))
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert!(
        !o.status.success() && text(&o).contains("--shards N"),
        "{}",
        text(&o)
    );
    assert!(!cwd.join("out").exists());
}

#[test]
fn slurm_script_runs_under_a_fake_array_task() {
    let script = repo().join("deploy/slurm/baton_batch.sbatch");
    let st = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success(), "bash -n");
    let body = std::fs::read_to_string(&script).unwrap();
    assert!(body.contains("#SBATCH --array=0-7%4") && body.contains("#SBATCH --gpus-per-task=1"));
    let d = tempfile::tempdir().unwrap();
    let shared = d.path();
    write_jobs(shared, 4);
    std::fs::create_dir(shared.join("models")).unwrap();
    // Array 1-2 (min 1): task 2 is shard 1 of 2, items 1 and 3.
    let o = program("bash", shared)
        .arg(&script)
        .args(SMALL)
        .env("SHARED", shared)
        .env("BATON", env!("CARGO_BIN_EXE_baton"))
        .env("RECIPE", recipe())
        .env("DEVICE", "cpu")
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut ids: Vec<String> = std::fs::read_dir(shared.join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("clip"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["clip-01", "clip-03"], "{}", text(&o));
}

#[test]
fn kubernetes_indexed_job_parses_and_its_command_runs() {
    let yaml = repo().join("deploy/k8s/baton-batch.yaml");
    // python3 with PyYAML reads the manifest; no skipping when it is missing.
    let py = Command::new("python3")
        .arg("-c")
        .arg("import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))")
        .arg(&yaml)
        .output()
        .expect("python3 is needed to parse the Kubernetes YAML");
    assert!(
        py.status.success(),
        "python3 -c 'import yaml' failed: {}",
        text(&py)
    );
    let job: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(job["kind"], "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = spec["completions"].as_u64().unwrap();
    assert!(spec["parallelism"].as_u64().unwrap() <= completions);
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/data");
    assert!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"].is_string());
    let cmd: Vec<String> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let shards = cmd
        .iter()
        .position(|a| a == "--shards")
        .map(|i| cmd[i + 1].parse::<u64>().unwrap());
    assert_eq!(shards, Some(completions), "--shards must equal completions");
    assert_eq!(cmd[0], "baton");

    // The pod's command on this machine: /data is a temp dir, the index is set.
    let d = tempfile::tempdir().unwrap();
    let data = d.path();
    std::fs::create_dir_all(data.join("recipes")).unwrap();
    std::fs::create_dir_all(data.join("models")).unwrap();
    std::fs::copy(recipe(), data.join("recipes/wan22_t2v.rhai")).unwrap();
    write_jobs(data, 10);
    let args: Vec<String> = cmd[1..]
        .iter()
        .map(|a| a.replace("/data", &data.display().to_string()))
        .collect();
    let o = baton(data)
        .args(&args)
        .args(SMALL)
        .args(["--device", "cpu"])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let ids: Vec<String> = std::fs::read_dir(data.join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("clip"))
        .collect();
    // Index 1 of 8 over 10 items: items 1 and 9.
    let mut ids = ids;
    ids.sort();
    assert_eq!(ids, ["clip-01", "clip-09"], "{}", text(&o));
}

#[test]
fn two_processes_on_the_same_items_do_not_both_write_them() {
    let d = tempfile::tempdir().unwrap();
    let cwd = d.path();
    write_jobs(cwd, 3);
    let kids: Vec<std::process::Child> = (0..2)
        .map(|_| {
            baton(cwd)
                .args(batch_args("jobs.jsonl", "out", &[]))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let logs: Vec<String> = kids
        .into_iter()
        .map(|k| {
            let o = k.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", text(&o));
            text(&o)
        })
        .collect();
    // "shard 0/1: 3 items: 3 done, 0 failed, 0 already done, 0 busy elsewhere; ..."
    let count = |what: &str| -> usize {
        logs.iter()
            .map(|l| {
                let line = l
                    .lines()
                    .find(|x| x.starts_with("shard 0/1:"))
                    .unwrap_or_default();
                let at = line
                    .find(what)
                    .unwrap_or_else(|| panic!("'{what}' in {line}"));
                line[..at]
                    .split_whitespace()
                    .last()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum()
    };
    assert_eq!(count(" done"), 3, "each item written once: {logs:?}");
    assert_eq!(
        count(" done") + count(" busy elsewhere") + count(" already done"),
        6,
        "{logs:?}"
    );
    assert!(hidden(&cwd.join("out")).is_empty());
}

/// A recipe without `batch(items)` runs item by item, each as `baton run`.
#[test]
fn recipes_without_a_batch_function_run_item_by_item() {
    let d = tempfile::tempdir().unwrap();
    let cwd = d.path();
    std::fs::write(
        cwd.join("r.rhai"),
        "let n = param(\"n\", 1, \"Columns\");\nlet tag = param(\"tag\", \"x\", \"Tag\");\n\
         if n > 3 { throw `too many: ${n}`; }\n\
         save_tensors(#{ x: zeros([1, n]) }, `${tag}.safetensors`);\n",
    )
    .unwrap();
    std::fs::write(
        cwd.join("jobs.csv"),
        "id,n,tag\na,2,first\nb,5,second\n,3,\n",
    )
    .unwrap();
    let o = baton(cwd)
        .args(["batch", "r.rhai", "--jobs", "jobs.csv", "--out", "out"])
        .output()
        .unwrap();
    let log = text(&o);
    assert!(!o.status.success(), "{log}");
    assert!(
        log.contains("(item by item)") && log.contains("item a run "),
        "{log}"
    );
    assert!(cwd.join("out/a/first.safetensors").exists());
    assert!(
        cwd.join("out/00002/x.safetensors").exists(),
        "default id and tag"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cwd.join("out/b/run.json")).unwrap())
            .unwrap();
    assert_eq!(m["status"], "error");
    assert!(m["error"].as_str().unwrap().contains("too many: 5"), "{m}");
    assert_eq!(m["parameters"]["n"], 5);
    assert!(hidden(&cwd.join("out")).is_empty());
}

/// SIGTERM (preemption, a deleted pod) stops the shard cleanly: exit 130,
/// no lock or temporary directory left, so a rerun anywhere takes the items.
#[test]
fn sigterm_releases_the_items_in_flight() {
    let d = tempfile::tempdir().unwrap();
    let cwd = d.path();
    write_jobs(cwd, 3);
    let log = cwd.join("log");
    let mut kid = baton(cwd)
        .args(batch_args("jobs.jsonl", "out", &[]))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("item "))
    {
        assert!(t0.elapsed() < Duration::from_secs(60), "never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(kid.id() as libc::pid_t, libc::SIGTERM) };
    let st = kid.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(st.code(), Some(130), "{logged}");
    let out = cwd.join("out");
    assert!(hidden(&out).is_empty(), "{:?}", hidden(&out));
    let o = baton(cwd)
        .args(batch_args("jobs.jsonl", "out", &[]))
        .output()
        .unwrap();
    assert!(
        o.status.success() && text(&o).contains("3 done"),
        "{}",
        text(&o)
    );
}
