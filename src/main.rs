//! The `baton` command line: run, repl, inspect, make-tiny.

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
    about = "Scriptable, memory-honest runner for two-expert Wan 2.2 pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct SessionArgs {
    /// Device memory budget, e.g. 24GiB (default: all of RAM on the CPU device).
    #[arg(long, value_parser = parse_size)]
    vram: Option<u64>,
    /// Directory searched for model files (repeatable; default: the current directory).
    #[arg(long = "models", value_name = "DIR")]
    models: Vec<PathBuf>,
    /// Directory for outputs, the only place scripts may write (default: ./out).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
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
        Ok(SessionConfig {
            budget: self.vram,
            model_roots: self.models.clone(),
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
        })
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
        #[command(flatten)]
        session: SessionArgs,
    },
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
    /// Write the built-in tiny Wan experts (high and low) into DIR.
    MakeTiny { dir: PathBuf },
    /// Time forwards, loads and deletes of the built-in tiny expert
    /// (`bench load`: load throughput of a large checkpoint).
    Bench {
        #[command(subcommand)]
        what: Option<BenchWhat>,
        #[arg(long, default_value_t = 160)]
        width: usize,
        #[arg(long, default_value_t = 160)]
        height: usize,
        #[arg(long, default_value_t = 9)]
        frames: usize,
        /// Text context length (the real pipeline pads to 512).
        #[arg(long, default_value_t = 64)]
        context: usize,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
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
        Command::Run { file, session } => {
            let mut s = Session::new(&session.config()?);
            if let Err(e) = s.run_file(&file) {
                return Err(match s.last_stop {
                    Some(stop) => Stopped(stop, format!("{stop}: {e}")).into(),
                    None => anyhow::Error::msg(e),
                });
            }
        }
        Command::Repl { session } => repl::run(&session.config()?)?,
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
            let o = baton::bench_load::LoadBenchOptions {
                size_gb,
                dir,
                repeats,
            };
            print!("{}", baton::bench_load::run(&o)?);
        }
        Command::Bench {
            what: None,
            width,
            height,
            frames,
            context,
            repeats,
        } => {
            let o = baton::bench::BenchOptions {
                width,
                height,
                frames,
                context_len: context,
                repeats: repeats.max(1),
            };
            print!("{}", baton::bench::run(&o)?);
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
