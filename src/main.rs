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
    match execute(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { file, session } => {
            let _value = Session::new(&session.config())
                .run_file(&file)
                .map_err(anyhow::Error::msg)?;
        }
        Command::Repl { session } => repl::run(&session.config())?,
        Command::Inspect { checkpoint, heads } => {
            print!("{}", baton::inspect::inspect(&checkpoint, heads)?)
        }
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
