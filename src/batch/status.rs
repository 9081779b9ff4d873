//! `baton batch status DIR`: items done, failed (with the first line of
//! each error) and pending, per shard, and videos per hour from the items'
//! manifests.

use super::items;
use serde_json::Value;
use std::path::Path;

pub fn render(out: &Path) -> Result<String, String> {
    let batch_json = out.join("batch.json");
    let text = std::fs::read_to_string(&batch_json).map_err(|e| {
        format!(
            "{}: {e} (is {} a `baton batch --out` directory?)",
            batch_json.display(),
            out.display()
        )
    })?;
    let b: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", batch_json.display()))?;
    let shards = b["shards"].as_u64().unwrap_or(1).max(1) as usize;
    let list = b["items"].as_array().cloned().unwrap_or_default();
    let mut per = vec![[0usize; 4]; shards]; // done, failed, running, pending
    let mut failed = Vec::new();
    let (mut busy_secs, mut first, mut last) = (0.0f64, f64::MAX, 0.0f64);
    let mut done = 0usize;
    for it in &list {
        let id = it["id"].as_str().unwrap_or_default();
        let shard = it["index"].as_u64().unwrap_or(0) as usize % shards;
        let m = items::read_manifest(out, id);
        let slot = match m.as_ref().map(|m| m["status"].as_str().unwrap_or("")) {
            Some("ok") => {
                let m = m.as_ref().expect("manifest");
                done += 1;
                busy_secs += m["batch"]["seconds"]
                    .as_f64()
                    .or(m["seconds"].as_f64())
                    .unwrap_or(0.0);
                if let (Some(s), Some(f)) = (
                    m["batch"]["started_unix"].as_f64(),
                    m["batch"]["finished_unix"].as_f64(),
                ) {
                    first = first.min(s);
                    last = last.max(f);
                }
                0
            }
            Some(_) => {
                let e = m
                    .as_ref()
                    .and_then(|m| m["error"].as_str())
                    .unwrap_or("(no message)");
                failed.push(format!("  {id}: {}", super::runner::first_line(e)));
                1
            }
            None if out.join(format!(".lock-{id}")).exists() => 2,
            None => 3,
        };
        per[shard][slot] += 1;
    }
    let sum = |k: usize| per.iter().map(|p| p[k]).sum::<usize>();
    let mut s = format!(
        "{}: {} items: {} done, {} failed, {} running, {} pending\n",
        out.display(),
        list.len(),
        sum(0),
        sum(1),
        sum(2),
        sum(3)
    );
    for (i, p) in per.iter().enumerate() {
        s.push_str(&format!(
            "  shard {i}/{shards}: {} done, {} failed, {} running, {} pending\n",
            p[0], p[1], p[2], p[3]
        ));
    }
    if !failed.is_empty() {
        s.push_str("failed:\n");
        for f in &failed {
            s.push_str(f);
            s.push('\n');
        }
    }
    if done > 0 && busy_secs > 0.0 {
        s.push_str(&format!(
            "videos per hour: {:.1} per process ({done} videos in {:.1} s of item time)",
            done as f64 * 3600.0 / busy_secs,
            busy_secs
        ));
        if last > first {
            s.push_str(&format!(
                "; {:.1} across all shards ({:.1} s from the first start to the last finish)",
                done as f64 * 3600.0 / (last - first),
                last - first
            ));
        }
        s.push('\n');
    }
    Ok(s)
}
