//! Where model files come from: the model roots.
//!
//! One type owns the search path a session, `baton import` and the command
//! line share: `--models` directories (default `.`), the folders of a
//! ComfyUI install (`--comfy`, else `$COMFYUI_PATH`, with its
//! `extra_model_paths.yaml`, see [`comfy`]), `$BATON_MODELS`, and the
//! `builtin:` names baton writes into its own cache. It resolves a path a
//! script names, lists the checkpoints under the roots, and gives the path
//! policy the directories scripts may read.

pub mod builtin;
pub mod comfy;

use std::path::{Path, PathBuf};

/// The prefix of a built-in model name (`builtin:wan-tiny-high`).
pub const BUILTIN_PREFIX: &str = "builtin:";

/// Directories searched for relative model paths, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRoots {
    dirs: Vec<PathBuf>,
}

/// The current directory alone.
impl Default for ModelRoots {
    fn default() -> Self {
        Self {
            dirs: vec![PathBuf::from(".")],
        }
    }
}

impl From<Vec<PathBuf>> for ModelRoots {
    fn from(dirs: Vec<PathBuf>) -> Self {
        Self::new(dirs)
    }
}

/// One `.safetensors` file found under a root (see [`ModelRoots::files`]).
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// The path relative to its root: what `load_model` takes.
    pub name: String,
    pub path: PathBuf,
    /// The root's last component (`diffusion_models`, `vae`, ... for ComfyUI folders).
    pub folder: String,
    pub bytes: u64,
}

impl ModelRoots {
    /// Exactly `dirs`, in order.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Self { dirs }
    }

    /// What a session searches: `dirs` (none: `.`), then `$BATON_MODELS`.
    pub fn with_env(dirs: &[PathBuf]) -> Self {
        let mut r = if dirs.is_empty() {
            Self::default()
        } else {
            Self::new(dirs.to_vec())
        };
        if let Some(extra) = std::env::var_os("BATON_MODELS") {
            r.dirs.extend(std::env::split_paths(&extra));
        }
        r
    }

    /// The directories the command line names: `--models` (`models`), then
    /// the folders of the ComfyUI install `comfy` (default:
    /// `$COMFYUI_PATH`), with `.` first when ComfyUI adds folders and no
    /// `--models` was given. `$BATON_MODELS` is not among them: the session
    /// adds it ([`ModelRoots::with_env`]).
    pub fn command_line(models: &[PathBuf], comfy: Option<&Path>) -> Result<Vec<PathBuf>, String> {
        let mut dirs = models.to_vec();
        let comfy = comfy
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("COMFYUI_PATH").map(PathBuf::from));
        if let Some(dir) = comfy {
            if dirs.is_empty() {
                // --models defaults to "."; keep that when ComfyUI adds folders.
                dirs.push(PathBuf::from("."));
            }
            for f in comfy::discover(&dir)? {
                tracing::debug!("ComfyUI {} folder: {}", f.kind, f.dir.display());
                dirs.push(f.dir);
            }
        }
        Ok(dirs)
    }

    /// The directories, in search order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    pub fn iter(&self) -> std::slice::Iter<'_, PathBuf> {
        self.dirs.iter()
    }

    /// Whether `path` names a built-in model (`builtin:NAME`).
    pub fn is_builtin(path: &str) -> bool {
        path.starts_with(BUILTIN_PREFIX)
    }

    /// Every built-in model name, as a script writes it (`builtin:NAME`).
    pub fn builtin_names() -> impl Iterator<Item = String> {
        builtin::BUILTINS
            .iter()
            .map(|(n, _)| format!("{BUILTIN_PREFIX}{n}"))
    }

    /// Finds a model file: a built-in name (written to baton's cache on
    /// first use), an absolute path, or a path under the first root that
    /// has it.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        if let Some(name) = path.strip_prefix(BUILTIN_PREFIX) {
            return builtin::materialise(name);
        }
        let p = Path::new(path);
        if p.is_absolute() {
            return Ok(p.to_path_buf());
        }
        for root in &self.dirs {
            let candidate = root.join(p);
            if candidate.exists() {
                return Ok(candidate);
            }
        }
        let roots: Vec<String> = self.dirs.iter().map(|r| r.display().to_string()).collect();
        Err(format!(
            "model file '{path}' not found under {}",
            roots.join(", ")
        ))
    }

    /// Finds a workflow's file `name` under the first root that has it,
    /// directly or in ComfyUI's `<folder>/` layout (`diffusion_models`,
    /// `vae`, ...). Returns the path relative to that root and the
    /// directory it was found in.
    pub fn find_in(&self, name: &str, folder: &str) -> Option<(String, PathBuf)> {
        for root in &self.dirs {
            if root.join(name).is_file() {
                return Some((name.to_string(), root.clone()));
            }
            let nested = Path::new(folder).join(name);
            if root.join(&nested).is_file() {
                return Some((nested.to_string_lossy().into_owned(), root.join(folder)));
            }
        }
        None
    }

    /// The `.safetensors` files under the roots (see [`files_under`]).
    pub fn files(&self) -> Vec<ModelFile> {
        files_under(&self.dirs)
    }
}

/// The `.safetensors` files directly in each of `dirs` and one folder
/// below (ComfyUI users sort models into subfolders), in `dirs` order,
/// sorted by name within a directory; a file under two of them is listed
/// once.
pub fn files_under(dirs: &[PathBuf]) -> Vec<ModelFile> {
    let mut out: Vec<ModelFile> = Vec::new();
    for root in dirs {
        let mut files = Vec::new();
        collect(root, 0, &mut files);
        files.sort();
        let folder = root
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| root.display().to_string());
        for path in files {
            if out.iter().any(|a| a.path == path) {
                continue;
            }
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.push(ModelFile {
                name,
                bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                path,
                folder: folder.clone(),
            });
        }
    }
    out
}

fn collect(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && depth < 1 && !e.file_name().to_string_lossy().starts_with('.') {
            collect(&p, depth + 1, out);
        } else if p.extension().is_some_and(|x| x == "safetensors") && p.is_file() {
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_under_the_first_root_that_has_the_file() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("m.safetensors"), b"x").unwrap();
        let roots = ModelRoots::new(vec![a.path().into(), b.path().into()]);
        assert_eq!(
            roots.resolve("m.safetensors").unwrap(),
            b.path().join("m.safetensors")
        );
        let abs = a.path().join("elsewhere.safetensors");
        assert_eq!(roots.resolve(abs.to_str().unwrap()).unwrap(), abs);
        let e = roots.resolve("nope.safetensors").unwrap_err();
        assert_eq!(
            e,
            format!(
                "model file 'nope.safetensors' not found under {}, {}",
                a.path().display(),
                b.path().display()
            )
        );
    }

    #[test]
    fn builtin_names_resolve_or_name_the_choices() {
        let e = ModelRoots::default().resolve("builtin:nope").unwrap_err();
        assert!(e.contains("unknown built-in model 'builtin:nope'"), "{e}");
        assert!(ModelRoots::builtin_names().any(|n| n == "builtin:wan-tiny-high"));
        assert!(ModelRoots::is_builtin("builtin:wan-tiny-low"));
        assert!(!ModelRoots::is_builtin("wan-tiny-low"));
    }

    #[test]
    fn finds_workflow_files_directly_or_in_comfy_folders() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("vae")).unwrap();
        std::fs::write(d.path().join("vae/v.safetensors"), b"x").unwrap();
        std::fs::write(d.path().join("m.safetensors"), b"x").unwrap();
        let roots = ModelRoots::new(vec![d.path().into()]);
        assert_eq!(
            roots.find_in("m.safetensors", "diffusion_models"),
            Some(("m.safetensors".into(), d.path().to_path_buf()))
        );
        assert_eq!(
            roots.find_in("v.safetensors", "vae"),
            Some(("vae/v.safetensors".into(), d.path().join("vae")))
        );
        assert_eq!(roots.find_in("v.safetensors", "loras"), None);
        let names: Vec<String> = roots.files().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["m.safetensors", "vae/v.safetensors"]);
    }

    #[test]
    fn command_line_roots_keep_dot_before_comfy_folders() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("models/vae")).unwrap();
        let dirs = ModelRoots::command_line(&[], Some(d.path())).unwrap();
        assert_eq!(dirs, [PathBuf::from("."), d.path().join("models/vae")]);
        let given = [PathBuf::from("/m")];
        let dirs = ModelRoots::command_line(&given, Some(d.path())).unwrap();
        assert_eq!(dirs, [PathBuf::from("/m"), d.path().join("models/vae")]);
        let e = ModelRoots::command_line(&given, Some(&d.path().join("no"))).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
    }
}
