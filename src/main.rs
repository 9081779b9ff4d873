//! The `baton` command line: run, plan, repl, help, recipes, import, inspect, make-tiny, bench.

use baton::host::limits::Limits;
use baton::host::{repl, Session, SessionConfig};
use baton::runtime::cancel::{self, Stop};
use baton::runtime::size::parse_size;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    disable_help_subcommand = true,
    about = "Scriptable, memory-honest runner for two-expert Wan 2.2 pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct SessionArgs {
    /// Where models compute: auto (a CUDA card when built with the cuda
    /// feature and one answers, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    device: String,
    /// Device memory budget, e.g. 24GiB (default: all of RAM on the CPU
    /// device; 90% of the card's free memory on CUDA).
    #[arg(long, value_parser = parse_size)]
    vram: Option<u64>,
    /// Directory searched for model files (repeatable; default: the current directory).
    #[arg(long = "models", value_name = "DIR")]
    models: Vec<PathBuf>,
    /// Directory for outputs, the only place scripts may write (default: `baton
    /// run`: out/<UTC time>-<script>/; the REPL: ./out).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// A ComfyUI install whose model folders (models/diffusion_models, unet,
    /// text_encoders, clip, vae, loras, and extra_model_paths.yaml) are
    /// searched after --models (default: $COMFYUI_PATH).
    #[arg(long, value_name = "DIR")]
    comfy: Option<PathBuf>,
    /// Also let scripts read and write under DIR (repeatable).
    #[arg(long = "allow-path", value_name = "DIR")]
    allow_path: Vec<PathBuf>,
    /// Wall-clock limit per run (or per REPL entry), in seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Rhai operations per run (0: unlimited).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_operations)]
    max_operations: u64,
    /// Nested function calls (0: unlimited).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_call_depth)]
    max_call_depth: usize,
    /// Expression nesting depth (0: unlimited).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_expr_depth)]
    max_expr_depth: usize,
    /// Bytes in one string (0: unlimited).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_string_size)]
    max_string_size: usize,
    /// Items in one array (0: unlimited).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_array_size)]
    max_array_size: usize,
    /// Entries in one object map (0: unlimited).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_map_size)]
    max_map_size: usize,
}

impl SessionArgs {
    fn config(&self) -> anyhow::Result<SessionConfig> {
        let timeout = match self.timeout {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 => Some(std::time::Duration::from_secs_f64(t)),
            Some(t) => anyhow::bail!("--timeout must be a positive number of seconds, got {t}"),
        };
        let mut model_roots = self.models.clone();
        let comfy = self
            .comfy
            .clone()
            .or_else(|| std::env::var_os("COMFYUI_PATH").map(PathBuf::from));
        if let Some(dir) = comfy {
            if model_roots.is_empty() {
                // --models defaults to "."; keep that when ComfyUI adds folders.
                model_roots.push(PathBuf::from("."));
            }
            for f in baton::host::comfy::discover(&dir).map_err(anyhow::Error::msg)? {
                tracing::debug!("ComfyUI {} folder: {}", f.kind, f.dir.display());
                model_roots.push(f.dir);
            }
        }
        Ok(SessionConfig {
            budget: self.vram,
            model_roots,
            params: Vec::new(),
            out_dir: self.out.clone(),
            allow_paths: self.allow_path.clone(),
            limits: Limits {
                max_operations: self.max_operations,
                max_call_depth: self.max_call_depth,
                max_expr_depth: self.max_expr_depth,
                max_string_size: self.max_string_size,
                max_array_size: self.max_array_size,
                max_map_size: self.max_map_size,
                timeout,
            },
            dry: false,
            device: None,
        })
    }

    /// The session config with its device opened (run and repl; a plan
    /// reads headers only and never touches a card).
    fn config_on_device(&self) -> anyhow::Result<SessionConfig> {
        let mut cfg = self.config()?;
        cfg.device =
            Some(baton::runtime::device::select(Some(&self.device)).map_err(anyhow::Error::msg)?);
        Ok(cfg)
    }
}

/// `baton run`'s exit code when Ctrl-C stopped the script (128 + SIGINT).
const EXIT_CANCELLED: u8 = 130;
/// `baton run`'s exit code when `--timeout` ran out (as timeout(1)).
const EXIT_TIMED_OUT: u8 = 124;

/// An error that carries its own exit code.
#[derive(Debug)]
struct Stopped(Stop, String);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Stopped {}

#[derive(Subcommand)]
enum Command {
    /// Run a .rhai pipeline script.
    Run {
        file: PathBuf,
        /// Record every ledger change and RSS sample to FILE.json (draw it with `baton trace`).
        #[arg(long, value_name = "FILE.json")]
        trace: Option<PathBuf>,
        /// Fill the recipe's param("NAME", ...) with VALUE (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
        set: Vec<(String, String)>,
        /// List the recipe's parameters (name, default, help) without running it.
        #[arg(long)]
        help_recipe: bool,
        /// Record sha256 of every model file in run.json (default: files up to
        /// 256 MiB; larger ones by size and mtime).
        #[arg(long)]
        hash_models: bool,
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Draw a trace from `baton run --trace` (or a plan from `baton plan
    /// --json`): bytes per model over time, RSS, the budget, and the script
    /// line of every load and delete.
    Trace {
        file: PathBuf,
        /// The picture to write.
        #[arg(long, value_name = "OUT.png")]
        png: PathBuf,
        /// Picture size in pixels, WIDTHxHEIGHT.
        #[arg(long, default_value = "1400x700")]
        size: String,
    },
    /// Predict a script's memory without running it: load, sample and delete
    /// on headers only, with the peak and where a delete_model would help.
    Plan {
        file: PathBuf,
        /// Print the plan as JSON (events, predictions, warnings) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Documentation of the script primitives (all, or one by name).
    Help {
        name: Option<String>,
        /// Render the whole reference as a markdown table (the README's section).
        #[arg(long)]
        markdown: bool,
    },
    /// List the recipes bundled in the binary (import "NAME" as x;).
    Recipes,
    /// Interactive session.
    Repl {
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Summarise a checkpoint from its header: architecture, layout, dtypes, size.
    Inspect {
        checkpoint: PathBuf,
        /// Attention heads, when they cannot be inferred.
        #[arg(long)]
        heads: Option<usize>,
        /// Show what load_model would keep resident under this budget, e.g. 24GiB.
        #[arg(long, value_parser = parse_size)]
        vram: Option<u64>,
    },
    /// Turn a ComfyUI workflow (.json, or a PNG/WebP/MP4 ComfyUI saved) into a
    /// script that deletes each model right after its last use.
    Import {
        workflow: PathBuf,
        /// Write the script here (default: the script to stdout, the report to stderr).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Use PATH for the workflow's file NAME (repeatable), e.g.
        /// wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors=builtin:wan-tiny-high.
        #[arg(long = "map", value_name = "NAME=PATH", value_parser = baton::import::parse_pair)]
        map: Vec<(String, String)>,
        /// Import unknown nodes as commented placeholders instead of failing.
        #[arg(long)]
        allow_unknown: bool,
        /// Keep every model loaded (ComfyUI's way), to compare against.
        #[arg(long)]
        keep_resident: bool,
        /// A different default for a recipe parameter, e.g. steps=4 (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = baton::import::parse_pair)]
        param: Vec<(String, String)>,
        /// Where the workflow's files are looked for (as `baton run --models`).
        #[arg(long = "models", value_name = "DIR")]
        models: Vec<PathBuf>,
    },
    /// Write the built-in tiny Wan experts (high and low) into DIR.
    MakeTiny { dir: PathBuf },
    /// Time forwards, loads and deletes of the built-in tiny expert
    /// (`bench memory`: the memory table; `bench load`: load throughput of a
    /// large checkpoint).
    Bench {
        #[command(subcommand)]
        what: Option<BenchWhat>,
        #[arg(long, global = true, default_value_t = 160)]
        width: usize,
        #[arg(long, global = true, default_value_t = 160)]
        height: usize,
        #[arg(long, global = true, default_value_t = 9)]
        frames: usize,
        /// Text context length (the real pipeline pads to 512).
        #[arg(long, global = true, default_value_t = 64)]
        context: usize,
        #[arg(long, global = true, default_value_t = 5)]
        repeats: usize,
        /// Where the bench computes (as for `run`): auto, cpu, cuda or cuda:N.
        #[arg(long, global = true, default_value = "auto")]
        device: String,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// The memory table: load throughput vs a plain read, RSS after delete,
    /// two-expert pipeline peaks, swap times cold and warm with and without
    /// prefetch, streamed forwards at 25/50/75% (uses the --width/--height/
    /// --frames/--context/--repeats given before it).
    Memory,
    /// load_model throughput of a bf16 Wan checkpoint against a plain
    /// sequential read of the same file (both from the page cache), and
    /// peak RSS during the load.
    Load {
        /// Checkpoint size in GB (written to a temp file, removed after).
        #[arg(long, default_value_t = 1.0)]
        size_gb: f64,
        /// Directory for the temp file (default: the system temp dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// The GPU table: pinned host->device GB/s, load GB/s, delete back to
    /// the driver's baseline, two-expert peaks sequential vs both loaded,
    /// forward resident vs 50% streamed, swap time, and one forward at
    /// 75,600 tokens with the 14B block dims. On the CPU the same code runs
    /// with RSS for device memory (a dry run of scripts/device_check.sh).
    Device {
        /// Size of each of the two bench experts in GB.
        #[arg(long, default_value_t = 2.0)]
        size_gb: f64,
        /// Tokens of the long-attention forward (0 skips it).
        #[arg(long, default_value_t = 75_600)]
        long_tokens: usize,
        /// Directory for the temp checkpoints (default: the system temp dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    cancel::install_sigint_handler();
    match execute(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<Stopped>() {
                Some(Stopped(Stop::Cancelled, _)) => ExitCode::from(EXIT_CANCELLED),
                Some(Stopped(Stop::TimedOut(_), _)) => ExitCode::from(EXIT_TIMED_OUT),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            file,
            trace,
            set,
            help_recipe,
            hash_models,
            session,
        } => {
            if help_recipe {
                let code = std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("cannot read script {}: {e}", file.display()))?;
                let text = baton::host::recipe::render_help(&file.display().to_string(), &code)
                    .map_err(anyhow::Error::msg)?;
                print!("{text}");
                return Ok(());
            }
            let mut cfg = session.config_on_device()?;
            cfg.params = set;
            let out_dir = cfg
                .out_dir
                .get_or_insert_with(|| default_out_dir(&file))
                .clone();
            run_with_manifest(&file, &cfg, &out_dir, hash_models, trace.as_deref())?;
        }
        Command::Help { name, markdown } => print!("{}", help_text(name.as_deref(), markdown)?),
        Command::Recipes => print!("{}", recipes_text()),
        Command::Repl { session } => repl::run(&session.config_on_device()?)?,
        Command::Trace { file, png, size } => {
            let (w, h) = size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                .filter(|&(w, h): &(u32, u32)| {
                    (200..=8000).contains(&w) && (150..=8000).contains(&h)
                })
                .ok_or_else(|| {
                    anyhow::anyhow!("--size must be WIDTHxHEIGHT (200..8000), got {size}")
                })?;
            let (trace, predicted) = baton::trace_plot::read(&file).map_err(anyhow::Error::msg)?;
            baton::trace_plot::draw(&trace, predicted.as_deref(), &png, (w, h))
                .map_err(anyhow::Error::msg)?;
            eprintln!("wrote {}", png.display());
        }
        Command::Plan {
            file,
            json,
            session,
        } => {
            let plan = baton::plan::plan_file(&file, &session.config()?);
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", baton::plan::render(&plan));
            }
            if plan.error.is_some() {
                anyhow::bail!("the plan stops where the script fails");
            }
        }
        Command::Inspect {
            checkpoint,
            heads,
            vram,
        } => print!("{}", baton::inspect::inspect(&checkpoint, heads, vram)?),
        Command::Bench {
            what:
                Some(BenchWhat::Load {
                    size_gb,
                    dir,
                    repeats,
                }),
            ..
        } => {
            let o = baton::bench::load::LoadBenchOptions {
                size_gb,
                dir,
                repeats,
            };
            print!("{}", baton::bench::load::run(&o)?);
        }
        Command::Bench {
            what:
                Some(BenchWhat::Device {
                    size_gb,
                    long_tokens,
                    dir,
                }),
            width,
            height,
            frames,
            context,
            repeats,
            device,
        } => {
            let dev = baton::runtime::device::select(Some(&device)).map_err(anyhow::Error::msg)?;
            let o = baton::bench::device::DeviceBenchOptions {
                size_gb,
                width,
                height,
                frames,
                context_len: context,
                repeats,
                long_tokens,
                dir,
            };
            print!("{}", baton::bench::device::run(&o, &dev)?);
        }
        Command::Bench {
            what,
            width,
            height,
            frames,
            context,
            repeats,
            ..
        } => {
            if matches!(what, Some(BenchWhat::Memory)) {
                let o = baton::bench::memory::MemoryBenchOptions {
                    width,
                    height,
                    frames,
                    context_len: context,
                    repeats: repeats.max(1),
                };
                print!("{}", baton::bench::memory::run(&o)?);
                return Ok(());
            }
            let o = baton::bench::BenchOptions {
                width,
                height,
                frames,
                context_len: context,
                repeats: repeats.max(1),
            };
            print!("{}", baton::bench::run(&o)?);
        }
        Command::Import {
            workflow,
            output,
            map,
            allow_unknown,
            keep_resident,
            param,
            models,
        } => {
            let o = baton::import::ImportOptions {
                maps: map,
                allow_unknown,
                keep_resident,
                param_defaults: param,
                model_roots: models,
            };
            let imported = baton::import::import_file(&workflow, &o).map_err(anyhow::Error::msg)?;
            match output {
                Some(path) => {
                    baton::media::write_atomically(&path, |tmp| {
                        std::fs::write(tmp, &imported.script).map_err(|e| e.to_string())
                    })
                    .map_err(anyhow::Error::msg)?;
                    println!("{}\nwrote {}", imported.report, path.display());
                }
                None => {
                    eprintln!("{}", imported.report);
                    print!("{}", imported.script);
                }
            }
        }
        Command::MakeTiny { dir } => {
            std::fs::create_dir_all(&dir)?;
            for (name, seed) in baton::runtime::builtin::BUILTINS {
                let path = dir.join(format!("{name}.safetensors"));
                baton::runtime::builtin::write(name, *seed, &path).map_err(anyhow::Error::msg)?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

/// `--set NAME=VALUE`.
fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got '{s}'")),
    }
}

/// `out/<UTC timestamp>-<script stem>/`: each run its own directory, so
/// results never overwrite each other and sort by time.
fn default_out_dir(script: &std::path::Path) -> PathBuf {
    let stem = script
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "script".into());
    let ts = baton::host::manifest::utc_timestamp(std::time::SystemTime::now(), false);
    let base = PathBuf::from("out").join(format!("{ts}-{stem}"));
    // Two runs of one script in the same second get their own directories.
    (1..)
        .map(|n| match n {
            1 => base.clone(),
            n => PathBuf::from(format!("{}-{n}", base.display())),
        })
        .find(|p| !p.exists())
        .unwrap_or(base)
}

/// Runs `file` and writes `run.json` beside its outputs, whether it
/// succeeded or not.
fn run_with_manifest(
    file: &std::path::Path,
    cfg: &SessionConfig,
    out_dir: &std::path::Path,
    hash_models: bool,
    trace: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let started = std::time::SystemTime::now();
    let clock = std::time::Instant::now();
    let baseline = baton::runtime::memstat::rss();
    let mut s = Session::new(cfg);
    if trace.is_some() {
        s.runtime.borrow_mut().timeline.sample_rss(20);
    }
    let result = s.run_file(file);
    if let Some(path) = trace {
        let t =
            s.runtime
                .borrow_mut()
                .timeline
                .finish(&file.display().to_string(), false, baseline);
        let json = serde_json::to_vec_pretty(&t)?;
        baton::media::write_atomically(path, |tmp| {
            std::fs::write(tmp, &json).map_err(|e| e.to_string())
        })
        .map_err(anyhow::Error::msg)?;
        eprintln!(
            "trace written to {} ({} events, {} RSS samples)",
            path.display(),
            t.events.len(),
            t.rss.len()
        );
    }
    let err = result.as_ref().err().map(|e| match s.last_stop {
        Some(stop) => format!("{stop}: {e}"),
        None => e.clone(),
    });
    let rt = s.runtime.borrow();
    let info = baton::host::manifest::RunInfo {
        script: file,
        started,
        seconds: clock.elapsed().as_secs_f64(),
        error: err.as_deref(),
        parameters: s.params.borrow().resolved(),
        journal: &rt.journal,
        peak_device: rt.timeline.peak_device(),
        peak_rss: baton::runtime::memstat::peak_rss(),
        out_dir,
        hash_all: hash_models,
    };
    match baton::host::manifest::write(&info) {
        Ok(p) => eprintln!("run manifest: {}", p.display()),
        Err(e) => eprintln!("warning: could not write the run manifest: {e}"),
    }
    match (err, s.last_stop) {
        (None, _) => Ok(()),
        (Some(e), Some(stop)) => Err(Stopped(stop, e).into()),
        (Some(e), None) => Err(anyhow::Error::msg(e)),
    }
}

fn help_text(name: Option<&str>, markdown: bool) -> anyhow::Result<String> {
    use baton::host::docs;
    if markdown {
        return Ok(docs::render_markdown());
    }
    match name {
        None => Ok(docs::render_index()),
        Some(n) => docs::find(n)
            .map(docs::render_text)
            .ok_or_else(|| anyhow::anyhow!("no primitive '{n}' (baton help lists them)")),
    }
}

fn recipes_text() -> String {
    let mut s =
        String::from("bundled recipes (import \"NAME\" as x; or import \"stdlib/NAME\" as x;):\n");
    for (name, code) in baton::host::engine::BUNDLED {
        s.push_str(&format!("\n{name}\n"));
        for line in baton::host::recipe::doc_comment(code).lines() {
            s.push_str(format!("  {line}").trim_end());
            s.push('\n');
        }
    }
    s
}
