//! Plain-text tables for `vram()` and `ram()` reports.
//!
//! The reports are ordinary maps (so `vram().used` works in scripts) carrying a
//! `kind` key; `to_string` on such a map renders the table.

use crate::runtime::size::mib;
use rhai::{Dynamic, Map};

fn int(m: &Map, k: &str) -> u64 {
    m.get(k).and_then(|v| v.as_int().ok()).unwrap_or(0).max(0) as u64
}

fn text(m: &Map, k: &str) -> String {
    m.get(k).map(|v| v.to_string()).unwrap_or_default()
}

/// Renders a report map as a table, or `None` for ordinary maps.
pub fn render(m: &Map) -> Option<String> {
    match m.get("kind")?.clone().into_string().ok()?.as_str() {
        "vram" => Some(render_vram(m)),
        "ram" => Some(render_ram(m)),
        "models" => Some(render_models(m)),
        _ => None,
    }
}

fn render_vram(m: &Map) -> String {
    let mut out = format!(
        "vram ({}): budget {} | used {} | free {}\n",
        text(m, "device"),
        mib(int(m, "budget")),
        mib(int(m, "used")),
        mib(int(m, "free"))
    );
    if m.contains_key("driver_total") {
        let gap = m.get("gap").and_then(|v| v.as_int().ok()).unwrap_or(0);
        out.push_str(&format!(
            "  driver: {} free of {} | this session holds {} (ledger {}, gap {:+} MiB){}\n",
            mib(int(m, "driver_free")),
            mib(int(m, "driver_total")),
            mib(int(m, "driver_held")),
            mib(int(m, "used")),
            gap / (1 << 20),
            if m.get("leak").and_then(|v| v.as_bool().ok()) == Some(true) {
                "  LEAK: over 5% apart"
            } else {
                ""
            }
        ));
    }
    if int(m, "pinned") > 0 {
        out.push_str(&format!(
            "  pinned host memory for streamed blocks: {}\n",
            mib(int(m, "pinned"))
        ));
    }
    let models: Vec<Map> = m
        .get("models")
        .and_then(|v| v.clone().into_array().ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.try_cast::<Map>())
        .collect();
    if models.is_empty() {
        out.push_str("  (no models loaded)");
        return out;
    }
    out.push_str(&format!(
        "  {:<16} {:<8} {:>12} {:>12} {:>12} {:>10} {:>6}\n",
        "model", "state", "resident", "offloaded", "host", "blocks", "loras"
    ));
    for mm in &models {
        out.push_str(&format!(
            "  {:<16} {:<8} {:>12} {:>12} {:>12} {:>10} {:>6}\n",
            text(mm, "name"),
            text(mm, "state"),
            mib(int(mm, "resident")),
            mib(int(mm, "offloaded")),
            mib(int(mm, "host")),
            // Models loaded whole (VAE) have no streamable blocks.
            match int(mm, "blocks") {
                0 => "-".to_string(),
                b => format!("{}/{b}", int(mm, "resident_blocks")),
            },
            mm.get("loras")
                .and_then(|v| v.clone().into_array().ok())
                .map_or(0, |a| a.len()),
        ));
    }
    out.trim_end().to_string()
}

fn render_ram(m: &Map) -> String {
    format!(
        "ram: rss {} | peak {} | model weights in host memory {}",
        mib(int(m, "rss")),
        mib(int(m, "peak_rss")),
        mib(int(m, "host"))
    )
}

fn render_models(m: &Map) -> String {
    let files: Vec<Map> = m
        .get("files")
        .and_then(|v| v.clone().into_array().ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.try_cast::<Map>())
        .collect();
    if files.is_empty() {
        return "models: no .safetensors files under the model roots (--models DIR, --comfy DIR)"
            .into();
    }
    let w = files
        .iter()
        .map(|f| text(f, "name").len())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = format!(
        "  {:<w$} {:>12}  {:<16} {}\n",
        "file", "size", "folder", "arch"
    );
    for f in &files {
        out.push_str(&format!(
            "  {:<w$} {:>12}  {:<16} {}\n",
            text(f, "name"),
            mib(int(f, "bytes")),
            text(f, "folder"),
            text(f, "arch")
        ));
    }
    out.trim_end().to_string()
}

/// `to_string` for any script value, using the tables for reports.
pub fn display(v: &Dynamic) -> String {
    if let Some(m) = v.read_lock::<Map>() {
        if let Some(s) = render(&m) {
            return s;
        }
    }
    v.to_string()
}

/// Escapes `|` for a markdown table cell.
pub fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(leak: bool) -> Map {
        let mut m = Map::new();
        let gib = 1i64 << 30;
        for (k, v) in [
            ("budget", 20 * gib),
            ("used", 14 * gib),
            ("free", 6 * gib),
            ("pinned", 7 * gib),
            ("driver_free", 60 * gib),
            ("driver_total", 80 * gib),
            ("driver_held", 14 * gib + (300 << 20)),
            ("gap", 300 << 20),
        ] {
            m.insert(k.into(), Dynamic::from(v));
        }
        m.insert("kind".into(), "vram".into());
        m.insert("device".into(), "cuda:0".into());
        m.insert("leak".into(), leak.into());
        m
    }

    #[test]
    fn vram_table_shows_the_driver_beside_the_ledger() {
        let t = render_vram(&report(false));
        assert!(t.starts_with("vram (cuda:0): budget 20480 MiB"), "{t}");
        assert!(
            t.contains("driver: 61440 MiB free of 81920 MiB | this session holds 14636 MiB (ledger 14336 MiB, gap +300 MiB)"),
            "{t}"
        );
        assert!(!t.contains("LEAK"), "{t}");
        assert!(
            t.contains("pinned host memory for streamed blocks: 7168 MiB"),
            "{t}"
        );
        assert!(render_vram(&report(true)).contains("LEAK: over 5% apart"));
    }
}
