//! ComfyUI model folders: `--comfy DIR` (or `$COMFYUI_PATH`) and its
//! `extra_model_paths.yaml`.
//!
//! ComfyUI users keep their weights in `models/diffusion_models`,
//! `models/unet`, `models/text_encoders`, `models/clip`, `models/vae` and
//! `models/loras`, often spread over drives through `extra_model_paths.yaml`.
//! Pointing baton at that install lets a script say
//! `load_model("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors")` as the
//! workflow's loader node would. The folders become model roots, so the path
//! policy treats them as readable and nothing else widens.
//!
//! The YAML is parsed by hand: ComfyUI's file uses a small subset (named
//! sections of `key: value` and `key: |` blocks of paths, `#` comments), and
//! a full YAML crate would be the largest dependency for the smallest job.

use std::path::{Path, PathBuf};

/// The ComfyUI folder names baton reads models from, in search order.
pub const FOLDERS: &[&str] = &[
    "diffusion_models",
    "unet",
    "text_encoders",
    "clip",
    "vae",
    "loras",
];

/// One discovered folder: ComfyUI's kind (`vae`, `loras`, ...) and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Folder {
    pub kind: String,
    pub dir: PathBuf,
}

/// The model folders of the ComfyUI install at `root`: those named in its
/// `extra_model_paths.yaml` (sections with `is_default: true` first), then
/// `root/models/<kind>`. Only folders that exist are returned.
pub fn discover(root: &Path) -> Result<Vec<Folder>, String> {
    if !root.is_dir() {
        return Err(format!(
            "--comfy / $COMFYUI_PATH: {} is not a directory",
            root.display()
        ));
    }
    let mut found = Vec::new();
    let yaml = root.join("extra_model_paths.yaml");
    let mut extra = Vec::new();
    if yaml.is_file() {
        let text =
            std::fs::read_to_string(&yaml).map_err(|e| format!("{}: {e}", yaml.display()))?;
        extra = parse_extra_paths(&text, root).map_err(|e| format!("{}: {e}", yaml.display()))?;
    }
    let (defaults, others): (Vec<_>, Vec<_>) = extra.into_iter().partition(|s| s.is_default);
    for f in defaults.into_iter().flat_map(|s| s.folders) {
        found.push(f);
    }
    for kind in FOLDERS {
        found.push(Folder {
            kind: kind.to_string(),
            dir: root.join("models").join(kind),
        });
    }
    for f in others.into_iter().flat_map(|s| s.folders) {
        found.push(f);
    }
    let mut out: Vec<Folder> = Vec::new();
    for f in found {
        if f.dir.is_dir() && !out.iter().any(|o| o.dir == f.dir) {
            out.push(f);
        }
    }
    Ok(out)
}

/// One top-level section of `extra_model_paths.yaml`.
#[derive(Debug, Default)]
pub struct Section {
    pub name: String,
    pub is_default: bool,
    pub folders: Vec<Folder>,
}

/// Parses ComfyUI's `extra_model_paths.yaml`. Relative `base_path`s are
/// taken from the file's directory `dir` (as ComfyUI does), relative folder
/// paths from `base_path`; `~` expands to the home directory. Keys other
/// than [`FOLDERS`], `base_path` and `is_default` are ignored.
pub fn parse_extra_paths(text: &str, dir: &Path) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    // (kind, paths as written) of the current section, resolved at its end
    // because base_path may come after the folders.
    let mut pending: Vec<(String, Vec<String>)> = Vec::new();
    let mut base: Option<String> = None;
    let mut block: Option<(String, usize)> = None; // key of a `|` block, its indent
    let finish = |s: &mut Vec<Section>,
                  pending: &mut Vec<(String, Vec<String>)>,
                  base: &mut Option<String>| {
        if let Some(sec) = s.last_mut() {
            let base_dir = match base.take() {
                Some(b) => join(dir, &b),
                None => dir.to_path_buf(),
            };
            for (kind, paths) in pending.drain(..) {
                for p in paths {
                    sec.folders.push(Folder {
                        kind: kind.clone(),
                        dir: join(&base_dir, &p),
                    });
                }
            }
        }
    };
    for (n, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim_end();
        if line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if let Some((key, block_indent)) = &block {
            if indent > *block_indent {
                if let Some((_, paths)) = pending.iter_mut().find(|(k, _)| k == key) {
                    paths.push(unquote(line.trim()));
                }
                continue;
            }
            block = None;
        }
        let Some((key, value)) = line.trim().split_once(':') else {
            return Err(format!(
                "line {}: expected 'key: value', got '{}'",
                n + 1,
                line.trim()
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if indent == 0 {
            finish(&mut sections, &mut pending, &mut base);
            if !value.is_empty() {
                return Err(format!(
                    "line {}: section '{key}' must hold indented keys",
                    n + 1
                ));
            }
            sections.push(Section {
                name: key.to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(sec) = sections.last_mut() else {
            return Err(format!("line {}: '{key}' is outside any section", n + 1));
        };
        match key {
            "base_path" => base = Some(unquote(value)),
            "is_default" => sec.is_default = value.eq_ignore_ascii_case("true"),
            k if FOLDERS.contains(&k) => {
                if value == "|" || value == "|-" || value == ">" {
                    block = Some((k.to_string(), indent));
                    pending.push((k.to_string(), Vec::new()));
                } else if !value.is_empty() {
                    pending.push((k.to_string(), vec![unquote(value)]));
                }
            }
            _ => {}
        }
    }
    finish(&mut sections, &mut pending, &mut base);
    Ok(sections)
}

fn strip_comment(line: &str) -> &str {
    // A '#' starts a comment at the line start or after whitespace.
    let b = line.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'#' && (i == 0 || b[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

/// `p` under `base` unless absolute; a leading `~/` is the home directory.
fn join(base: &Path, p: &str) -> PathBuf {
    let p = p.trim_end_matches('/');
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = dirs::home_dir() {
            return home.join(rest);
        }
    }
    base.join(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comfyui_example_format() {
        let yaml = r#"
#Rename this to extra_model_paths.yaml and ComfyUI will load it
comfyui:
    base_path: /data/comfy/
    is_default: true
    checkpoints: models/checkpoints/
    text_encoders: |
         models/text_encoders/
         models/clip/  # legacy location
    diffusion_models: |
                  models/diffusion_models
                  models/unet
    vae: models/vae/
other_ui:
    base_path: "rel/base"
    loras: 'loras'
"#;
        let s = parse_extra_paths(yaml, Path::new("/etc/comfy")).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[0].is_default && !s[1].is_default);
        let dirs: Vec<(&str, PathBuf)> = s[0]
            .folders
            .iter()
            .map(|f| (f.kind.as_str(), f.dir.clone()))
            .collect();
        assert_eq!(
            dirs,
            [
                (
                    "text_encoders",
                    PathBuf::from("/data/comfy/models/text_encoders")
                ),
                ("text_encoders", PathBuf::from("/data/comfy/models/clip")),
                (
                    "diffusion_models",
                    PathBuf::from("/data/comfy/models/diffusion_models")
                ),
                ("diffusion_models", PathBuf::from("/data/comfy/models/unet")),
                ("vae", PathBuf::from("/data/comfy/models/vae")),
            ]
        );
        assert_eq!(
            s[1].folders[0].dir,
            PathBuf::from("/etc/comfy/rel/base/loras")
        );
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let e = parse_extra_paths("a:\n  just text\n", Path::new(".")).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}
