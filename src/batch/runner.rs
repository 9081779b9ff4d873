//! One shard of a batch: its items, item by item (each a fresh session, as
//! `baton run`) or stage-major (the recipe's `batch(items)` over up to
//! `--stage-items` items at once, each model loaded once per group).

use super::items::{self, Acquired, Locks};
use super::jobs::{self, Item};
use super::shard::Shard;
use crate::host::api::params::Params;
use crate::host::manifest::{self, RunInfo};
use crate::host::recipe::{scan_params, ParamDecl};
use crate::host::run::{run_with_manifest, Stopped};
use crate::host::{Session, SessionConfig};
use crate::runtime::cancel::{self, Stop};
use crate::runtime::journal::{Journal, SampleRecord};
use crate::runtime::memstat;
use indicatif::{ProgressBar, ProgressStyle};
use rhai::Dynamic;
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The recipe function that takes a whole shard.
pub const BATCH_FN: &str = "batch";
/// Default for `--stage-items`.
pub const STAGE_ITEMS: usize = 16;

#[derive(Debug, Clone)]
pub struct Options {
    pub recipe: PathBuf,
    pub jobs: PathBuf,
    pub out: PathBuf,
    pub shard: Shard,
    /// `--set` for every item (an item's own value wins).
    pub set: Vec<(String, String)>,
    pub retries: u32,
    /// Most items one stage holds at once (stage-major).
    pub stage_items: usize,
    /// Run item by item even when the recipe defines `batch(items)`.
    pub item_major: bool,
    pub stale_lock: Duration,
    pub hash_models: bool,
    pub session: SessionConfig,
}

/// What a shard did.
#[derive(Debug, Default)]
pub struct Summary {
    pub shard: String,
    pub items: usize,
    pub done: usize,
    /// Done already (same parameters) by an earlier run.
    pub skipped: usize,
    /// Locked by another live process.
    pub busy: usize,
    pub failed: Vec<(String, String)>,
    pub model_loads: usize,
    pub stage_major: bool,
    pub seconds: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shard {}: {} items: {} done, {} failed, {} already done, {} busy elsewhere; {} model loads ({}); {:.2} s",
            self.shard,
            self.items,
            self.done,
            self.failed.len(),
            self.skipped,
            self.busy,
            self.model_loads,
            if self.stage_major { "stage-major" } else { "item by item" },
            self.seconds
        )
    }
}

/// One item with its parameters resolved as the recipe's `param(...)` would.
#[derive(Debug, Clone)]
pub struct Work {
    pub item: Item,
    pub params: rhai::Map,
    pub resolved: Map<String, Value>,
}

/// Each declared parameter's value for `set` (defaults evaluated as Rhai
/// literals), through the same [`Params`] as `param(...)` in a script.
pub fn resolve(
    decls: &[ParamDecl],
    set: &[(String, String)],
) -> Result<(rhai::Map, Map<String, Value>), String> {
    let engine = rhai::Engine::new();
    let mut p = Params::new(set);
    let mut map = rhai::Map::new();
    for d in decls {
        let default = engine
            .eval_expression::<Dynamic>(&d.default)
            .map_err(|e| format!("param '{}': default {}: {e}", d.name, d.default))?;
        map.insert(d.name.as_str().into(), p.value(&d.name, default)?);
    }
    Ok((map, p.resolved()))
}

/// Everything checked before anything is written or loaded: the recipe's
/// parameters, `--set`, the jobs file, the shard's items.
pub fn prepare(o: &Options) -> Result<(Vec<ParamDecl>, Vec<Work>), String> {
    let code = std::fs::read_to_string(&o.recipe)
        .map_err(|e| format!("cannot read recipe {}: {e}", o.recipe.display()))?;
    let decls = scan_params(&code).map_err(|e| format!("{}: {e}", o.recipe.display()))?;
    jobs::check_set(&o.set, &decls)?;
    let all = jobs::read(&o.jobs, &decls, &o.set)?;
    let mut work = Vec::new();
    for item in all {
        let (params, resolved) = resolve(&decls, &item.set)
            .map_err(|e| format!("{}:{}: {e}", o.jobs.display(), item.line))?;
        work.push(Work {
            item,
            params,
            resolved,
        });
    }
    Ok((decls, work))
}

/// Creates `--out` if needed and checks it can be written (leaving nothing).
pub fn check_out(out: &Path) -> Result<(), String> {
    let existed = out.exists();
    std::fs::create_dir_all(out)
        .map_err(|e| format!("cannot create --out {}: {e}", out.display()))?;
    let probe = out.join(format!(".probe-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => {
            if !existed {
                let _ = std::fs::remove_dir(out);
            }
            Err(format!("cannot write into --out {}: {e}", out.display()))
        }
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes `DIR/batch.json`: the job list (ids and numbers) and the shard
/// count, for `baton batch status`. Every shard writes the same text.
fn write_batch_json(o: &Options, work: &[Work]) -> Result<(), String> {
    let items: Vec<Value> = work
        .iter()
        .map(|w| json!({ "id": w.item.id, "index": w.item.index }))
        .collect();
    let v = json!({
        "recipe": o.recipe.display().to_string(),
        "jobs": o.jobs.display().to_string(),
        "shards": o.shard.count,
        "items": items,
    });
    let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())? + "\n";
    crate::media::write_atomically(&o.out.join("batch.json"), |tmp| {
        std::fs::write(tmp, &text).map_err(|e| e.to_string())
    })
}

/// An item's result from one attempt.
struct Outcome {
    error: Option<String>,
    seconds: f64,
    stages: Map<String, Value>,
    started: SystemTime,
}

/// The shard's log lines and terminal bar.
#[derive(Clone)]
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(n: usize) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            let b = ProgressBar::new(n as u64);
            b.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} items  {elapsed}  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        Self { bar }
    }

    fn line(&self, text: String) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    fn stage(&self, id: &str, stage: &str, seconds: f64) {
        self.bar.set_message(format!("{id} {stage}"));
        self.line(format!("item {id} {stage} {seconds:.2}s"));
    }
}

extern "C" fn on_sigterm(_: libc::c_int) {
    // An atomic store: safe in a signal handler.
    cancel::request_cancel();
}

/// SIGTERM (Slurm's preemption or time limit, a pod's deletion) stops the
/// shard as Ctrl-C does: the item in flight is dropped, its lock released
/// and its temporary directory removed, so a rerun on any host can take it
/// at once instead of waiting for the lock to go stale.
fn stop_on_sigterm() {
    let handler: extern "C" fn(libc::c_int) = on_sigterm;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Runs the shard. Fails (after finishing every other item) when an item
/// finally failed, or at once when Ctrl-C, SIGTERM or a setup error stops it.
pub fn run(o: &Options) -> anyhow::Result<Summary> {
    let clock = Instant::now();
    stop_on_sigterm();
    let (_decls, work) = prepare(o).map_err(anyhow::Error::msg)?;
    check_out(&o.out).map_err(anyhow::Error::msg)?;
    write_batch_json(o, &work).map_err(anyhow::Error::msg)?;
    let mine: Vec<Work> = work
        .into_iter()
        .filter(|w| o.shard.owns(w.item.index))
        .collect();
    let stage_major = !o.item_major && {
        let mut s = Session::new(&SessionConfig {
            dry: true,
            ..o.session.clone()
        });
        s.define_file(&o.recipe).map_err(anyhow::Error::msg)?;
        s.has_function(BATCH_FN, 1)
    };
    let mut sum = Summary {
        shard: o.shard.to_string(),
        items: mine.len(),
        stage_major,
        ..Default::default()
    };
    let progress = Progress::new(mine.len());
    let locks = Locks::new(&o.out, o.stale_lock);
    let todo: Vec<Work> = mine
        .into_iter()
        .filter(|w| {
            let done = items::is_done(&o.out, &w.item.id, &w.resolved);
            if done {
                sum.skipped += 1;
                progress.bar.inc(1);
                progress.line(format!("item {} already done", w.item.id));
            }
            !done
        })
        .collect();
    let group = if stage_major { o.stage_items.max(1) } else { 1 };
    let result = (|| -> anyhow::Result<()> {
        for chunk in todo.chunks(group) {
            let mut held = Vec::new();
            for w in chunk {
                match locks.acquire(&w.item.id).map_err(anyhow::Error::msg)? {
                    Acquired::Busy(who) => {
                        sum.busy += 1;
                        progress.bar.inc(1);
                        progress.line(format!("item {} busy (locked by {who})", w.item.id));
                    }
                    Acquired::Held if items::is_done(&o.out, &w.item.id, &w.resolved) => {
                        locks.release(&w.item.id);
                        sum.skipped += 1;
                        progress.bar.inc(1);
                    }
                    Acquired::Held => {
                        items::clean_leftovers(&o.out, &w.item.id);
                        held.push(w.clone());
                    }
                }
            }
            let r = run_held(o, &held, stage_major, &progress, &mut sum);
            for w in &held {
                let _ = std::fs::remove_dir_all(o.out.join(items::tmp_name(&w.item.id)));
                locks.release(&w.item.id);
            }
            r?;
        }
        Ok(())
    })();
    progress.bar.finish_and_clear();
    sum.seconds = clock.elapsed().as_secs_f64();
    result?;
    Ok(sum)
}

/// Runs the held items, retrying failures, and commits each item's directory.
fn run_held(
    o: &Options,
    held: &[Work],
    stage_major: bool,
    progress: &Progress,
    sum: &mut Summary,
) -> anyhow::Result<()> {
    let mut todo: Vec<Work> = held.to_vec();
    let mut attempt = 0;
    while !todo.is_empty() {
        if let Err(stop) = cancel::check() {
            return Err(Stopped(stop, format!("{stop}: batch stopped")).into());
        }
        let mut tmps = Vec::new();
        for w in &todo {
            tmps.push(items::make_tmp(&o.out, &w.item.id).map_err(anyhow::Error::msg)?);
        }
        let outcomes = if stage_major {
            run_stage_major(o, &todo, &tmps, progress, sum)?
        } else {
            let w = &todo[0];
            vec![run_one(o, w, &tmps[0], progress, sum)?]
        };
        if let Err(stop) = cancel::check() {
            return Err(Stopped(stop, format!("{stop}: batch stopped")).into());
        }
        let mut retry = Vec::new();
        for ((w, tmp), out) in todo.iter().zip(&tmps).zip(outcomes) {
            let last = attempt >= o.retries;
            if out.error.is_some() && !last {
                progress.line(format!(
                    "item {} failed (attempt {}), retrying: {}",
                    w.item.id,
                    attempt + 1,
                    first_line(out.error.as_deref().unwrap_or_default())
                ));
                retry.push(w.clone());
                continue;
            }
            finish(o, w, tmp, &out, attempt, stage_major).map_err(anyhow::Error::msg)?;
            progress.bar.inc(1);
            match out.error {
                None => sum.done += 1,
                Some(e) => {
                    progress.line(format!("item {} failed: {}", w.item.id, first_line(&e)));
                    sum.failed.push((w.item.id.clone(), e));
                }
            }
        }
        todo = retry;
        attempt += 1;
    }
    Ok(())
}

pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// Adds the batch fields to the item's `run.json` in `tmp` and commits it.
fn finish(
    o: &Options,
    w: &Work,
    tmp: &Path,
    out: &Outcome,
    attempt: u32,
    stage_major: bool,
) -> Result<(), String> {
    let path = tmp.join("run.json");
    let mut v: Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({ "status": "error", "parameters": w.resolved }));
    if let Some(e) = &out.error {
        v["status"] = "error".into();
        v["error"] = e.as_str().into();
    }
    v["out_dir"] = items::item_dir(&o.out, &w.item.id)
        .display()
        .to_string()
        .into();
    v["batch"] = json!({
        "id": w.item.id,
        "index": w.item.index,
        "line": w.item.line,
        "jobs": o.jobs.display().to_string(),
        "shard": o.shard.index,
        "shards": o.shard.count,
        "attempts": attempt + 1,
        "stage_major": stage_major,
        "stage_seconds": out.stages,
        "started_unix": unix(out.started),
        "finished_unix": unix(SystemTime::now()),
        "seconds": out.seconds,
    });
    let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())? + "\n";
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    items::commit(&o.out, &w.item.id, tmp)
}

/// Item by item: the recipe run as `baton run` runs it, in a fresh session.
fn run_one(
    o: &Options,
    w: &Work,
    tmp: &Path,
    progress: &Progress,
    sum: &mut Summary,
) -> anyhow::Result<Outcome> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let mut cfg = o.session.clone();
    cfg.params = w.item.set.clone();
    cfg.out_dir = Some(tmp.to_path_buf());
    let r = run_with_manifest(&o.recipe, &cfg, tmp, o.hash_models, None);
    if let Err(e) = &r {
        if let Some(Stopped(Stop::Cancelled, _)) = e.downcast_ref::<Stopped>() {
            return Err(Stopped(Stop::Cancelled, format!("{e}")).into());
        }
    }
    let seconds = clock.elapsed().as_secs_f64();
    sum.model_loads += items_loaded(&tmp.join("run.json"));
    progress.stage(&w.item.id, "run", seconds);
    let mut stages = Map::new();
    stages.insert("run".into(), seconds.into());
    Ok(Outcome {
        error: r.err().map(|e| format!("{e:#}")),
        seconds,
        stages,
        started,
    })
}

/// Model files a run's manifest lists (each loaded once in a `baton run`).
fn items_loaded(run_json: &Path) -> usize {
    std::fs::read_to_string(run_json)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["models"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// Per-item accounting while `batch(items)` runs: the time and the sampling
/// passes since the last `batch_progress` call belong to the item it names.
struct Tally {
    index: HashMap<String, usize>,
    last: Instant,
    last_samples: usize,
    seconds: Vec<f64>,
    stages: Vec<Map<String, Value>>,
    samples: Vec<Vec<SampleRecord>>,
}

/// Stage-major: one session, `batch(items)` over the group.
fn run_stage_major(
    o: &Options,
    todo: &[Work],
    tmps: &[PathBuf],
    progress: &Progress,
    sum: &mut Summary,
) -> anyhow::Result<Vec<Outcome>> {
    let started = SystemTime::now();
    let n = todo.len();
    let mut cfg = o.session.clone();
    cfg.out_dir = Some(o.out.clone());
    cfg.params = Vec::new();
    let mut s = Session::new(&cfg);
    let tally = Rc::new(RefCell::new(Tally {
        index: todo
            .iter()
            .enumerate()
            .map(|(i, w)| (w.item.id.clone(), i))
            .collect(),
        last: Instant::now(),
        last_samples: 0,
        seconds: vec![0.0; n],
        stages: vec![Map::new(); n],
        samples: vec![Vec::new(); n],
    }));
    {
        let (tally, rt, progress) = (tally.clone(), s.runtime.clone(), progress.clone());
        s.engine.register_fn(
            "batch_progress",
            move |item: rhai::Map, stage: &str| -> Result<(), Box<rhai::EvalAltResult>> {
                let id = item.get("id").map(|v| v.to_string()).unwrap_or_default();
                let mut t = tally.borrow_mut();
                let Some(&i) = t.index.get(&id) else {
                    return Err(format!("batch_progress: no item '{id}' in this batch").into());
                };
                let secs = t.last.elapsed().as_secs_f64();
                t.last = Instant::now();
                let rt = rt.borrow();
                let from = t.last_samples.min(rt.journal.samples.len());
                t.samples[i].extend(rt.journal.samples[from..].iter().cloned());
                t.last_samples = rt.journal.samples.len();
                t.seconds[i] += secs;
                let prev = t.stages[i]
                    .get(stage)
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                t.stages[i].insert(stage.into(), (prev + secs).into());
                progress.stage(&id, stage, secs);
                Ok(())
            },
        );
    }
    let arr: rhai::Array = todo
        .iter()
        .zip(tmps)
        .map(|(w, tmp)| {
            let mut m = rhai::Map::new();
            m.insert("id".into(), w.item.id.clone().into());
            let dir = tmp
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            m.insert("dir".into(), dir.into());
            m.insert("params".into(), w.params.clone().into());
            m.insert("error".into(), Dynamic::UNIT);
            Dynamic::from_map(m)
        })
        .collect();
    let result = s
        .define_file(&o.recipe)
        .and_then(|()| s.call(BATCH_FN, vec![Dynamic::from_array(arr)]));
    if let Some(Stop::Cancelled) = s.last_stop {
        return Err(Stopped(Stop::Cancelled, "cancelled (Ctrl-C): batch stopped".into()).into());
    }
    // Each item's error from the returned array (matched by id).
    let mut errors: Vec<Option<String>> = vec![None; n];
    match result {
        Err(e) => errors.iter_mut().for_each(|x| *x = Some(e.clone())),
        Ok(v) => {
            let returned = v.try_cast::<rhai::Array>().unwrap_or_default();
            let mut seen = vec![false; n];
            let t = tally.borrow();
            for it in returned {
                let Some(m) = it.try_cast::<rhai::Map>() else {
                    continue;
                };
                let id = m.get("id").map(|v| v.to_string()).unwrap_or_default();
                if let Some(&i) = t.index.get(&id) {
                    seen[i] = true;
                    if let Some(err) = m.get("error").filter(|e| !e.is_unit()) {
                        errors[i] = Some(err.to_string());
                    }
                }
            }
            for (i, s) in seen.iter().enumerate() {
                if !s {
                    errors[i] = Some(format!(
                        "{BATCH_FN}(items) did not return item '{}'",
                        todo[i].item.id
                    ));
                }
            }
        }
    }
    let rt = s.runtime.borrow();
    sum.model_loads += rt.journal.loads.len();
    // The model files, identified (hashed) once for the whole group.
    let models_journal = Journal {
        loads: rt.journal.loads.clone(),
        samples: Vec::new(),
    };
    let mut models = Value::Null;
    let mut t = tally.borrow_mut();
    let mut outcomes = Vec::new();
    for (i, (w, tmp)) in todo.iter().zip(tmps).enumerate() {
        let journal = Journal {
            loads: Vec::new(),
            samples: std::mem::take(&mut t.samples[i]),
        };
        let dest = items::item_dir(&o.out, &w.item.id);
        let mut info = RunInfo {
            script: &o.recipe,
            started,
            seconds: t.seconds[i],
            error: errors[i].as_deref(),
            parameters: w.resolved.clone(),
            journal: &journal,
            peak_device: rt.timeline.peak_device(),
            peak_rss: memstat::peak_rss(),
            out_dir: &dest,
            hash_all: o.hash_models,
        };
        if models.is_null() {
            info.journal = &models_journal;
            models = manifest::build(&info)["models"].clone();
            info.journal = &journal;
        }
        let mut v = manifest::build(&info);
        v["models"] = models.clone();
        let text = serde_json::to_string_pretty(&v)? + "\n";
        std::fs::write(tmp.join("run.json"), text)?;
        outcomes.push(Outcome {
            error: errors[i].clone(),
            seconds: t.seconds[i],
            stages: std::mem::take(&mut t.stages[i]),
            started,
        });
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_resolve_as_param_would() {
        let decls = scan_params(
            r#"let a = param("prompt", "a \"red\" fox", "p"); let b = param("cfg", -3.5, "c");
               let c = param("steps", 20, "s"); let d = param("go", true, "g");"#,
        )
        .unwrap();
        let (map, json) = resolve(&decls, &[("steps".into(), "8".into())]).unwrap();
        assert_eq!(map["prompt"].to_string(), "a \"red\" fox");
        assert_eq!(map["cfg"].as_float(), Ok(-3.5));
        assert_eq!(map["steps"].as_int(), Ok(8));
        assert_eq!(map["go"].as_bool(), Ok(true));
        assert_eq!(json["steps"], 8);
        assert_eq!(json["cfg"], -3.5);
        let e = resolve(&decls, &[("steps".into(), "x".into())]).unwrap_err();
        assert!(e.contains("steps"), "{e}");
    }
}
