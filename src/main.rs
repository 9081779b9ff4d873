//! The `baton` command line: run, batch, plan, repl, help, recipes, import, inspect, make-tiny, bench.
//!
//! The flags live in [`cli`]; this file dispatches them.

mod cli;

use baton::host::repl;
use baton::host::run::{self, Stopped};
use baton::runtime::cancel::{self, Stop};
use clap::Parser;
use cli::{BenchWhat, Cli, Command};
use std::process::ExitCode;

/// Loads hand tensors the page cache's pages instead of copies; this
/// allocator frees them (see `checkpoint::mapped`).
#[global_allocator]
static ALLOC: baton::checkpoint::mapped::Allocator = baton::checkpoint::mapped::Allocator;

/// `baton run`'s exit code when Ctrl-C stopped the script (128 + SIGINT).
const EXIT_CANCELLED: u8 = 130;
/// `baton run`'s exit code when `--timeout` ran out (as timeout(1)).
const EXIT_TIMED_OUT: u8 = 124;

fn main() -> ExitCode {
    #[cfg(feature = "onednn")]
    baton::models::wan::onednn::passive_openmp();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        // Colour only on a terminal and without NO_COLOR: piped or
        // redirected logs stay plain text.
        .with_ansi(repl::use_color())
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
                .get_or_insert_with(|| run::default_out_dir(&file))
                .clone();
            run::run_with_manifest(&file, &cfg, &out_dir, hash_models, trace.as_deref())?;
        }
        Command::Help { name, markdown } => print!(
            "{}",
            baton::host::docs::help_text(name.as_deref(), markdown).map_err(anyhow::Error::msg)?
        ),
        Command::Recipes => print!("{}", baton::host::recipe::bundled_text()),
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
                    block_tokens,
                    attention_tokens,
                    bounds,
                    full_expert,
                    vae_latent,
                    dir,
                }),
            latent,
            device,
        } => {
            let dev = baton::runtime::device::select(Some(&device)).map_err(anyhow::Error::msg)?;
            let o = baton::bench::device::DeviceBenchOptions {
                size_gb,
                latent: latent.options(0),
                block_tokens: block_tokens.into_iter().filter(|&n| n > 0).collect(),
                attention_tokens,
                bounds,
                full_expert,
                vae_latent: match vae_latent.as_deref() {
                    None if dev.is_cuda() => Some((21, 60, 104)),
                    None => None,
                    Some(&[f, h, w]) if f * h * w > 0 => Some((f, h, w)),
                    Some(&[_, _, _]) => None,
                    Some(v) => anyhow::bail!(
                        "bench device: --vae-latent takes three numbers, frames,height,width (got {v:?})"
                    ),
                },
                dir,
            };
            print!("{}", baton::bench::device::run(&o, &dev)?);
        }
        Command::Bench {
            what:
                Some(BenchWhat::Speed {
                    rounds,
                    layers,
                    dtype,
                    only,
                }),
            ..
        } => {
            let dtypes = match dtype.as_deref() {
                None => vec![],
                Some("f32") => vec![candle_core::DType::F32],
                Some("bf16") => vec![candle_core::DType::BF16],
                Some(d) => anyhow::bail!("bench speed: dtype {d} is not f32 or bf16"),
            };
            if let Some(w) = only
                .iter()
                .find(|w| !["dit", "vae", "umt5"].contains(&w.as_str()))
            {
                anyhow::bail!("bench speed: --only {w} is not dit, vae or umt5");
            }
            let o = baton::bench::speed::SpeedOptions {
                rounds,
                layers,
                dtypes,
                only,
            };
            print!("{}", baton::bench::speed::run(&o)?);
        }
        Command::Bench {
            what: Some(BenchWhat::Memory),
            latent,
            ..
        } => print!("{}", baton::bench::memory::run(&latent.options(1))?),
        Command::Bench {
            what:
                Some(BenchWhat::Gguf {
                    rounds,
                    dim,
                    heads,
                    layers,
                    ffn,
                    latent_frames,
                }),
            ..
        } => {
            let o = baton::bench::gguf::GgufBenchOptions {
                rounds,
                dim,
                heads,
                layers,
                ffn,
                frames: latent_frames,
            };
            print!("{}", baton::bench::gguf::run(&o)?);
        }
        Command::Bench {
            what: None, latent, ..
        } => print!("{}", baton::bench::run(&latent.options(1))?),
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
        Command::Batch(args) => match args.what {
            Some(cli::BatchWhat::Status { dir }) => {
                print!(
                    "{}",
                    baton::batch::status::render(&dir).map_err(anyhow::Error::msg)?
                )
            }
            None => {
                let o = args.options()?;
                let sum = baton::batch::runner::run(&o)?;
                eprintln!("{sum}");
                if !sum.failed.is_empty() {
                    anyhow::bail!(
                        "{} of {} items failed (see {}/<id>/run.json)",
                        sum.failed.len(),
                        sum.items,
                        o.out.display()
                    );
                }
            }
        },
        Command::MakeTiny { dir } => {
            std::fs::create_dir_all(&dir)?;
            for (name, seed) in baton::roots::builtin::BUILTINS {
                let path = dir.join(format!("{name}.safetensors"));
                baton::roots::builtin::write(name, *seed, &path).map_err(anyhow::Error::msg)?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
