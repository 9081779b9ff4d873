//! The `baton` command line's definitions: subcommands, their flags, and the
//! session config they assemble. `main.rs` dispatches them.

use baton::bench::LatentOptions;
use baton::host::limits::Limits;
use baton::host::params_text::parse_pair;
use baton::host::SessionConfig;
use baton::roots::ModelRoots;
use baton::runtime::size::parse_size;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    disable_help_subcommand = true,
    about = "Scriptable, memory-honest runner for two-expert Wan 2.2 pipelines"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct SessionArgs {
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
    pub fn config(&self) -> anyhow::Result<SessionConfig> {
        let timeout = match self.timeout {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 => Some(std::time::Duration::from_secs_f64(t)),
            Some(t) => anyhow::bail!("--timeout must be a positive number of seconds, got {t}"),
        };
        let model_roots = ModelRoots::command_line(&self.models, self.comfy.as_deref())
            .map_err(anyhow::Error::msg)?;
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
    pub fn config_on_device(&self) -> anyhow::Result<SessionConfig> {
        let mut cfg = self.config()?;
        cfg.device =
            Some(baton::runtime::device::select(Some(&self.device)).map_err(anyhow::Error::msg)?);
        Ok(cfg)
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a .rhai pipeline script.
    Run {
        file: PathBuf,
        /// Record every ledger change and RSS sample to FILE.json (draw it with `baton trace`).
        #[arg(long, value_name = "FILE.json")]
        trace: Option<PathBuf>,
        /// Fill the recipe's param("NAME", ...) with VALUE (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_pair)]
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
        #[arg(long = "map", value_name = "NAME=PATH", value_parser = parse_pair)]
        map: Vec<(String, String)>,
        /// Import unknown nodes as commented placeholders instead of failing.
        #[arg(long)]
        allow_unknown: bool,
        /// Keep every model loaded (ComfyUI's way), to compare against.
        #[arg(long)]
        keep_resident: bool,
        /// A different default for a recipe parameter, e.g. steps=4 (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_pair)]
        param: Vec<(String, String)>,
        /// Where the workflow's files are looked for (as `baton run --models`).
        #[arg(long = "models", value_name = "DIR")]
        models: Vec<PathBuf>,
    },
    /// Run a recipe over many jobs (JSON Lines or CSV of its parameters),
    /// one shard per process (`--shard I/N`, a Slurm job array or a
    /// Kubernetes Indexed Job), each item into DIR/<id>/; `batch status DIR`
    /// sums a batch up.
    Batch(BatchArgs),
    /// Write every built-in tiny model into DIR: the T2V experts, umT5, the
    /// Wan 2.1 VAE, and the image-to-video set (I2V experts and their
    /// LoRAs, TI2V-5B, the Wan 2.2 VAE).
    MakeTiny { dir: PathBuf },
    /// Time forwards, loads and deletes of the built-in tiny expert
    /// (`bench memory`: the memory table; `bench load`: load throughput of a
    /// large checkpoint).
    Bench {
        #[command(subcommand)]
        what: Option<BenchWhat>,
        #[command(flatten)]
        latent: LatentArgs,
        /// Where the bench computes (as for `run`): auto, cpu, cuda or cuda:N.
        #[arg(long, global = true, default_value = "auto")]
        device: String,
    },
}

/// The latent the benches run on (`bench`, `bench memory`, `bench device`).
#[derive(Args, Clone)]
pub struct LatentArgs {
    #[arg(long, global = true, default_value_t = 160)]
    pub width: usize,
    #[arg(long, global = true, default_value_t = 160)]
    pub height: usize,
    #[arg(long, global = true, default_value_t = 9)]
    pub frames: usize,
    /// Text context length (the real pipeline pads to 512).
    #[arg(long, global = true, default_value_t = 64)]
    pub context: usize,
    #[arg(long, global = true, default_value_t = 5)]
    pub repeats: usize,
}

impl LatentArgs {
    /// The bench options, with at least `min_repeats` repeats.
    pub fn options(&self, min_repeats: usize) -> LatentOptions {
        LatentOptions {
            width: self.width,
            height: self.height,
            frames: self.frames,
            context_len: self.context,
            repeats: self.repeats.max(min_repeats),
        }
    }
}

#[derive(Subcommand)]
pub enum BenchWhat {
    /// baton against its PyTorch peers (benches/peers) on the same CPU, in
    /// the same run: the DiT forward and the umT5 encode in f32 and bf16 and
    /// the Wan 2.1 VAE decode at the issue-19 configuration, alternating
    /// baton and the peer.
    Speed {
        /// Alternating rounds (baton, peer) per row.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// DiT layers.
        #[arg(long, default_value_t = 4)]
        layers: usize,
        /// Only this dtype (f32 or bf16; default both).
        #[arg(long)]
        dtype: Option<String>,
        /// Only these rows, comma-separated: dit, vae, umt5 (default all).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// The memory table: load throughput vs a plain read, RSS after delete,
    /// two-expert pipeline peaks, swap times cold and warm with and without
    /// prefetch, streamed forwards at 25/50/75% (uses the --width/--height/
    /// --frames/--context/--repeats given before it).
    Memory,
    /// The GGUF speed table: a seeded expert at the `bench speed`
    /// configuration as f32, bf16, Q8_0 and Q4_K (dequantize-then-f32 and
    /// candle's quantized kernel), forward times, resident bytes and errors,
    /// in one run. Its latent is [1,16,F,32,32] (F = --latent-frames, 3 by
    /// default: 768 tokens) with 512 text tokens; the latent flags do not apply.
    Gguf {
        /// Interleaved rounds (one forward of every row each).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Model width.
        #[arg(long, default_value_t = 1024)]
        dim: usize,
        /// Attention heads (dim / heads must be 128).
        #[arg(long, default_value_t = 8)]
        heads: usize,
        /// DiT layers.
        #[arg(long, default_value_t = 4)]
        layers: usize,
        /// Feed-forward width.
        #[arg(long, default_value_t = 4096)]
        ffn: usize,
        /// Latent frames of the [1,16,F,32,32] input (256 tokens each).
        #[arg(long = "latent-frames", default_value_t = 3)]
        latent_frames: usize,
    },
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
        /// Token counts of the 14B-dimension block forwards, bf16 and fp8
        /// (comma-separated; 0 skips them).
        #[arg(long, alias = "long-tokens", value_delimiter = ',', default_values_t = [32_760, 75_600])]
        block_tokens: Vec<usize>,
        /// Tokens of the attention speed case (40 heads x 128) and of the
        /// fused-vs-chunked parity case (at most 4,096); 0 skips them.
        #[arg(long, default_value_t = 32_760)]
        attention_tokens: usize,
        /// Fail (exit non-zero) when a figure misses the card's bounds:
        /// 14B block at 75,600 tokens <= 0.6 s, attention >= 50% of the
        /// GEMM's TFLOP/s, fp8 block <= 1.1x bf16, load >= 8 GB/s.
        #[arg(long)]
        bounds: bool,
        /// Also write the whole 14B expert (40 bf16 blocks, ~28 GB, in
        /// --dir) and time one CFG step at 480p x 81 frames.
        #[arg(long)]
        full_expert: bool,
        /// Latent frames, height and width of the Wan 2.1 VAE decode at the
        /// real widths (random weights, bf16 on a card). Default on a card:
        /// 21,60,104 (480p x 81 frames); on the CPU it runs only when given.
        /// 0,0,0 skips it.
        #[arg(long, value_delimiter = ',')]
        vae_latent: Option<Vec<usize>>,
        /// Directory for the temp checkpoints (default: the system temp dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BatchArgs {
    #[command(subcommand)]
    pub what: Option<BatchWhat>,
    /// The recipe (a .rhai script with param(...) declarations).
    #[arg(required = true)]
    pub recipe: Option<PathBuf>,
    /// The jobs: JSON Lines (one object of parameters per line, optional
    /// "id") or CSV with a header row of parameter names.
    #[arg(long, value_name = "JOBS", required = true)]
    pub jobs: Option<PathBuf>,
    /// This process's shard, I/N (items k with k mod N == I). Default:
    /// SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX
    /// with --shards N, else every item.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// The shard count, for JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's completions).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Retries of an item that failed, before it is recorded as failed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
    /// Most items one stage-major pass holds at once (their contexts and
    /// latents stay in memory between stages); more items run in groups,
    /// each loading every model once.
    #[arg(long, value_name = "N", default_value_t = baton::batch::runner::STAGE_ITEMS)]
    pub stage_items: usize,
    /// Run item by item (a fresh session per item, as `baton run`) even
    /// when the recipe defines batch(items).
    #[arg(long)]
    pub item_major: bool,
    /// Seconds after which a lock nobody touched is stale (its holder on
    /// another host died); on this host a lock whose process is gone is
    /// stale at once.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub stale_lock: u64,
    /// A value for every item, NAME=VALUE (an item's own value wins; repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub set: Vec<(String, String)>,
    /// Record sha256 of every model file in each run.json (as `baton run`).
    #[arg(long)]
    pub hash_models: bool,
    #[command(flatten)]
    pub session: SessionArgs,
}

#[derive(Subcommand)]
pub enum BatchWhat {
    /// Items done, failed (first line of each error) and pending, per
    /// shard, and videos per hour, from DIR's manifests.
    Status { dir: PathBuf },
}

impl BatchArgs {
    /// The shard run's options (the shard from the flags or the environment).
    pub fn options(self) -> anyhow::Result<baton::batch::Options> {
        let shard = baton::batch::Shard::resolve(self.shard.as_deref(), self.shards, |n| {
            std::env::var(n).ok()
        })
        .map_err(anyhow::Error::msg)?;
        let out = self.session.out.clone().ok_or_else(|| {
            anyhow::anyhow!("baton batch needs --out DIR (each item goes to DIR/<id>/)")
        })?;
        Ok(baton::batch::Options {
            recipe: self.recipe.expect("clap requires RECIPE"),
            jobs: self.jobs.expect("clap requires --jobs"),
            out,
            shard,
            set: self.set,
            retries: self.retries,
            stage_items: self.stage_items,
            item_major: self.item_major,
            stale_lock: std::time::Duration::from_secs(self.stale_lock),
            hash_models: self.hash_models,
            session: self.session.config_on_device()?,
        })
    }
}
