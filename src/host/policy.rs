//! Which files a script may read and write.
//!
//! A recipe from a stranger runs with the user's permissions, so every
//! primitive that touches a file asks this policy first. Reads are allowed
//! under the model roots, the script's own directory tree, the output
//! directory and any `--allow-path`; writes only under the output directory
//! and `--allow-path`. Paths are resolved (symlinks included) before the
//! check, so `..`, absolute paths and symlinks cannot step outside.

use std::path::{Component, Path, PathBuf};

/// One allowed directory: as the user wrote it (for messages) and resolved.
#[derive(Debug, Clone)]
struct Root {
    shown: PathBuf,
    resolved: PathBuf,
}

impl Root {
    fn new(p: &Path) -> Self {
        Self {
            shown: p.to_path_buf(),
            resolved: resolve_lenient(p),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PathPolicy {
    /// Where relative input paths are looked up, in order (model roots first).
    search: Vec<PathBuf>,
    read: Vec<Root>,
    write: Vec<Root>,
    out_dir: PathBuf,
    /// A plan checks every write but performs none.
    dry: bool,
}

impl PathPolicy {
    /// `model_roots` are searched for relative inputs; `out_dir` takes
    /// relative outputs; `allow` widens both reads and writes.
    pub fn new(model_roots: &[PathBuf], out_dir: &Path, allow: &[PathBuf]) -> Self {
        let mut p = Self {
            out_dir: out_dir.to_path_buf(),
            ..Default::default()
        };
        for r in model_roots {
            p.add_read_root(r);
        }
        p.write.push(Root::new(out_dir));
        p.search.push(out_dir.to_path_buf());
        for a in allow {
            p.add_read_root(a);
            p.write.push(Root::new(a));
        }
        p
    }

    /// Adds a directory scripts may read from (a script's own directory).
    pub fn add_read_root(&mut self, dir: &Path) {
        if self.read.iter().any(|r| r.shown == dir) {
            return;
        }
        self.read.push(Root::new(dir));
        self.search.push(dir.to_path_buf());
    }

    /// Makes writes check-only (for `baton plan`).
    pub fn set_dry(&mut self, dry: bool) {
        self.dry = dry;
    }

    /// Whether outputs are really written (false while planning).
    pub fn writes_enabled(&self) -> bool {
        !self.dry
    }

    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// Resolves an input path for `what` (the primitive, for messages):
    /// absolute, else the first existing match under the search roots. The
    /// file must exist and lie under a read (or write) root once resolved.
    pub fn read(&self, what: &str, path: &str) -> Result<PathBuf, String> {
        let p = Path::new(path);
        let found = if p.is_absolute() {
            p.exists().then(|| p.to_path_buf())
        } else {
            self.search.iter().map(|r| r.join(p)).find(|c| c.exists())
        };
        let Some(found) = found else {
            return Err(format!(
                "{what}: file '{path}' not found (searched {})",
                list(self.search.iter().map(|p| p.as_path()))
            ));
        };
        let real = found
            .canonicalize()
            .map_err(|e| format!("{what}: {}: {e}", found.display()))?;
        let allowed = self.read.iter().chain(&self.write);
        if allowed.clone().any(|r| real.starts_with(&r.resolved)) {
            return Ok(real);
        }
        Err(format!(
            "{what}: '{path}' resolves to {}, outside the directories this script may read ({}); \
             pass --allow-path DIR to allow it",
            real.display(),
            list(allowed.map(|r| r.shown.as_path()))
        ))
    }

    /// Resolves an output path: absolute, else under the output directory.
    /// Its existing part is resolved (symlinks included) and the result must
    /// lie under a write root.
    pub fn write(&self, what: &str, path: &str) -> Result<PathBuf, String> {
        let p = Path::new(path);
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.out_dir.join(p)
        };
        let real = resolve_lenient(&joined);
        if self.write.iter().any(|r| real.starts_with(&r.resolved)) {
            return Ok(real);
        }
        Err(format!(
            "{what}: '{path}' resolves to {}, outside the directories this script may write ({}); \
             pass --out DIR or --allow-path DIR to allow it",
            real.display(),
            list(self.write.iter().map(|r| r.shown.as_path()))
        ))
    }

    /// Checks a module file found by `import`.
    pub fn check_import(&self, file: &Path) -> Result<PathBuf, String> {
        self.read("import", &file.to_string_lossy())
    }
}

fn list<'a>(paths: impl Iterator<Item = &'a Path>) -> String {
    paths
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An absolute path with its longest existing prefix canonicalised (so
/// symlinks are followed) and the rest normalised lexically. The missing
/// part cannot hold symlinks, so popping `..` there is exact.
pub fn resolve_lenient(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut existing = abs.clone();
    let mut tail: Vec<std::ffi::OsString> = Vec::new();
    let base = loop {
        if let Ok(c) = existing.canonicalize() {
            break c;
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                tail.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            // Ends in `..` or `.` (or is the root) and does not resolve.
            _ => {
                let last = existing.components().next_back();
                if let (Some(c), Some(parent)) = (last, existing.parent()) {
                    tail.push(c.as_os_str().to_os_string());
                    existing = parent.to_path_buf();
                } else {
                    break existing;
                }
            }
        }
    };
    let mut out = base;
    for c in tail.iter().rev() {
        match Path::new(c).components().next() {
            Some(Component::ParentDir) => {
                out.pop();
            }
            Some(Component::CurDir) | None => {}
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_resolution_pops_dotdot_in_the_missing_part() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        assert_eq!(
            resolve_lenient(&d.path().join("a/b/../c")),
            root.join("a/c")
        );
        assert_eq!(
            resolve_lenient(&d.path().join("a/../../x")),
            root.parent().unwrap().join("x")
        );
    }

    #[test]
    fn writes_outside_the_out_dir_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = PathPolicy::new(&[], d.path(), &[]);
        assert!(p.write("save", "x/y.png").is_ok());
        let e = p.write("save", "../escape.png").unwrap_err();
        assert!(e.contains("outside") && e.contains("escape.png"), "{e}");
        assert!(p.write("save", "/etc/passwd").is_err());
    }
}
