//! The `baton` command line: run, repl, inspect, make-tiny.

use baton::host::{repl, Session, SessionConfig};
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
    /// Directory for outputs (default: ./out).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

impl SessionArgs {
    fn config(&self) -> SessionConfig {
        SessionConfig {
            budget: self.vram,
            model_roots: self.models.clone(),
            out_dir: self.out.clone(),
        }
    }
}

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
    },
    /// Write the built-in tiny Wan experts (high and low) into DIR.
    MakeTiny { dir: PathBuf },
    /// Time forwards, loads and deletes of the built-in tiny expert.
    Bench {
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
    let cli = Cli::parse();
    match cli.command {
        Command::Run { file, session } => {
            let mut s = Session::new(&session.config());
            match s.run_file(&file) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Repl { session } => match repl::run(&session.config()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Inspect { checkpoint, heads } => match baton::inspect::inspect(&checkpoint, heads)
        {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Bench {
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
            match baton::bench::run(&o) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::MakeTiny { dir } => {
            let cfg = baton::runtime::builtin::tiny_config();
            for (name, seed) in baton::runtime::builtin::BUILTINS {
                let path = dir.join(format!("{name}.safetensors"));
                if let Err(e) = std::fs::create_dir_all(&dir)
                    .map_err(|e| e.to_string())
                    .and_then(|_| baton::runtime::builtin::write_tiny(&path, &cfg, *seed, name))
                {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
    }
}
