//! What every row of `baton bench speed` shares: its options, the row, the
//! alternating rounds (baton, peer, baton, peer ...), the PyTorch peer
//! process and the per-kernel span table. The rows themselves live in `speed` (DiT), `speed_vae` and
//! `speed_umt5`, all above this file.

use super::median;
use candle_core::DType;
use std::fmt::Write;
use std::path::PathBuf;
use std::process::Command;

/// Options of `baton bench speed`.
#[derive(Debug, Clone)]
pub struct SpeedOptions {
    /// Alternating rounds (each: one baton forward, one peer forward).
    pub rounds: usize,
    /// Layers of the DiT (the figures use 4).
    pub layers: usize,
    /// Only the dtypes named (empty: f32 and bf16).
    pub dtypes: Vec<DType>,
    /// Only the rows of these works (`dit`, `vae`, `umt5`; empty: all).
    pub only: Vec<String>,
}

impl SpeedOptions {
    /// Whether the rows of `work` are measured.
    pub fn wants(&self, work: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == work)
    }

    /// The dtypes a row family measures: those asked, else f32 and bf16.
    pub fn dtypes_or_both(&self) -> Vec<DType> {
        if self.dtypes.is_empty() {
            vec![DType::F32, DType::BF16]
        } else {
            self.dtypes.clone()
        }
    }
}

/// PyTorch's name of `dtype`, as the peer scripts take it.
pub fn torch_dtype(dtype: DType) -> &'static str {
    if dtype == DType::BF16 {
        "bfloat16"
    } else {
        "float32"
    }
}

/// The Python that runs the peers, if one is installed.
pub fn peer_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BATON_PEER_PYTHON") {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    let v = PathBuf::from("venv/bin/python");
    v.exists().then_some(v)
}

/// The directory of the peer scripts (`benches/peers` of the source tree).
fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers")
}

/// Runs a peer script with `args` and returns its median time in seconds
/// (it prints `median <ms> ms`).
pub fn run_peer(py: &PathBuf, script: &str, args: &[String]) -> anyhow::Result<f64> {
    let mut cmd = Command::new(py);
    cmd.arg(peer_dir().join(script)).args(args);
    // The peer keeps PyTorch's own OpenMP wait policy when baton set its own
    // (feature onednn; see `onednn::passive_openmp`).
    if std::env::var_os("BATON_SET_OMP_WAIT_POLICY").is_some() {
        cmd.env_remove("OMP_WAIT_POLICY")
            .env_remove("BATON_SET_OMP_WAIT_POLICY");
    }
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "peer {script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ms = text
        .split("median ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("peer {script} printed no median: {text}"))?;
    Ok(ms / 1000.0)
}

/// [`run_peer`] when a peer Python is installed, else `None`.
pub fn run_peer_if(
    py: &Option<PathBuf>,
    script: &str,
    args: &[String],
) -> anyhow::Result<Option<f64>> {
    match py {
        Some(py) => run_peer(py, script, args).map(Some),
        None => Ok(None),
    }
}

/// One row of the table: baton's and the peer's median and the median of
/// per-round ratios (peer / baton, above 1 when baton is faster).
pub struct Row {
    pub what: String,
    pub baton_s: f64,
    pub peer_s: f64,
    pub ratio: f64,
    pub peer_measured_now: bool,
}

/// Alternates `baton` and `peer` for `rounds`; the peer closure returns
/// `None` when no peer runs.
pub fn interleave(
    what: String,
    rounds: usize,
    mut baton: impl FnMut() -> anyhow::Result<f64>,
    mut peer: impl FnMut() -> anyhow::Result<Option<f64>>,
    recorded: f64,
) -> anyhow::Result<Row> {
    baton()?; // warm-up
    let (mut b, mut p, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        let tb = baton()?;
        b.push(tb);
        if let Some(tp) = peer()? {
            p.push(tp);
            r.push(tp / tb);
        }
    }
    let baton_s = median(b);
    Ok(if p.is_empty() {
        Row {
            what,
            baton_s,
            peer_s: recorded,
            ratio: recorded / baton_s,
            peer_measured_now: false,
        }
    } else {
        Row {
            what,
            baton_s,
            peer_s: median(p),
            ratio: median(r),
            peer_measured_now: true,
        }
    })
}

/// One timed run of `run` (seconds) with the spans on, as a markdown table
/// of each span's milliseconds and share; what no span covers is `rest`.
pub fn span_table(
    what: &str,
    rest_name: &str,
    run: impl FnOnce() -> anyhow::Result<f64>,
) -> anyhow::Result<String> {
    use crate::models::wan::spans;
    spans::enable(true);
    let total = run();
    let parts = spans::totals();
    spans::enable(false);
    let total = total?;
    let mut s = format!("{what}:\n");
    writeln!(s, "| span | ms | share |\n|---|---|---|")?;
    let mut rest = total;
    for (name, v) in parts {
        rest -= v;
        writeln!(s, "| {name} | {:.1} | {:.0}% |", v * 1e3, 100.0 * v / total)?;
    }
    writeln!(
        s,
        "| {rest_name} | {:.1} | {:.0}% |",
        rest * 1e3,
        100.0 * rest / total
    )?;
    writeln!(s, "| total | {:.1} | 100% |", total * 1e3)?;
    Ok(s)
}
