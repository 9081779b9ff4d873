//! Item directories and locks under the batch's `--out DIR`.
//!
//! `DIR/<id>/` holds an item's outputs and its `run.json`. It is built in
//! `DIR/.tmp-<id>-<pid>/` and renamed into place, so a killed process
//! never leaves half an item. `DIR/.lock-<id>` says which process works on
//! an item (host, pid); its holder touches it every [`HEARTBEAT`]. A lock is
//! stale when its process is gone (same host) or it has not been touched
//! for the stale limit (any host, e.g. a node that died); a stale lock is
//! taken over.

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How often a held lock's mtime is refreshed.
pub const HEARTBEAT: Duration = Duration::from_secs(20);

pub fn item_dir(out: &Path, id: &str) -> PathBuf {
    out.join(id)
}

pub fn tmp_name(id: &str) -> String {
    format!(".tmp-{id}-{}", std::process::id())
}

fn lock_path(out: &Path, id: &str) -> PathBuf {
    out.join(format!(".lock-{id}"))
}

/// The item's `run.json`, if it has one.
pub fn read_manifest(out: &Path, id: &str) -> Option<Value> {
    let text = fs::read_to_string(item_dir(out, id).join("run.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether the item is done with these parameters (so a rerun skips it).
pub fn is_done(out: &Path, id: &str, parameters: &serde_json::Map<String, Value>) -> bool {
    read_manifest(out, id)
        .is_some_and(|m| m["status"] == "ok" && m["parameters"].as_object() == Some(parameters))
}

/// Removes temporary directories an earlier (killed) process left for `id`.
/// Only called while holding the item's lock.
pub fn clean_leftovers(out: &Path, id: &str) {
    let prefixes = [format!(".tmp-{id}-"), format!(".old-{id}-")];
    let Ok(rd) = fs::read_dir(out) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let rest = prefixes.iter().find_map(|p| name.strip_prefix(p.as_str()));
        // `<pid>` only: an id with '-' must not match another id's prefix.
        if rest.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit())) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A fresh, empty temporary directory for `id`.
pub fn make_tmp(out: &Path, id: &str) -> Result<PathBuf, String> {
    let tmp = out.join(tmp_name(id));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    Ok(tmp)
}

/// Puts the finished temporary directory in place of `DIR/<id>/`.
pub fn commit(out: &Path, id: &str, tmp: &Path) -> Result<(), String> {
    let dest = item_dir(out, id);
    let old = out.join(format!(".old-{id}-{}", std::process::id()));
    let had_old = dest.exists();
    if had_old {
        let _ = fs::remove_dir_all(&old);
        fs::rename(&dest, &old).map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    fs::rename(tmp, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    if had_old {
        let _ = fs::remove_dir_all(&old);
    }
    Ok(())
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // when the name fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// What the lock file says.
fn lock_text() -> String {
    format!("{} {}\n", hostname(), std::process::id())
}

/// Why a lock is stale, or None when its holder may still be working.
fn stale_reason(text: &str, age: Duration, stale_after: Duration) -> Option<String> {
    let mut parts = text.split_whitespace();
    let (host, pid) = (
        parts.next(),
        parts.next().and_then(|p| p.parse::<u32>().ok()),
    );
    if let (Some(host), Some(pid)) = (host, pid) {
        if host == hostname() && (pid == std::process::id() || !pid_alive(pid)) {
            return Some(format!("process {pid} on {host} is gone"));
        }
    }
    (age > stale_after).then(|| format!("not touched for {:.0} s", age.as_secs_f64()))
}

/// The locks this process holds, touched by a heartbeat thread.
#[derive(Clone)]
pub struct Locks {
    out: PathBuf,
    held: Arc<Mutex<Vec<PathBuf>>>,
    stale_after: Duration,
}

pub enum Acquired {
    Held,
    /// Another live process holds it.
    Busy(String),
}

impl Locks {
    pub fn new(out: &Path, stale_after: Duration) -> Self {
        let held: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let weak = Arc::downgrade(&held);
        std::thread::spawn(move || loop {
            std::thread::sleep(HEARTBEAT);
            let Some(held) = weak.upgrade() else { return };
            let paths = held.lock().map(|h| h.clone()).unwrap_or_default();
            for p in paths {
                if let Ok(f) = fs::OpenOptions::new().append(true).open(&p) {
                    let _ = f.set_modified(SystemTime::now());
                }
            }
        });
        Self {
            out: out.to_path_buf(),
            held,
            stale_after,
        }
    }

    /// Takes `id`'s lock, taking over a stale one.
    pub fn acquire(&self, id: &str) -> Result<Acquired, String> {
        let path = lock_path(&self.out, id);
        for _ in 0..3 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(lock_text().as_bytes())
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    self.held.lock().expect("lock list").push(path);
                    return Ok(Acquired::Held);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let age = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            let Some(why) = stale_reason(&text, age, self.stale_after) else {
                return Ok(Acquired::Busy(text.trim().to_string()));
            };
            // Take it over by renaming: of two processes doing this at
            // once only one rename succeeds; check it moved what was judged.
            let aside = self.out.join(format!(".stale-{id}-{}", std::process::id()));
            if fs::rename(&path, &aside).is_ok() {
                let moved = fs::read_to_string(&aside).unwrap_or_default();
                if moved != text {
                    // Someone else's fresh lock: put it back.
                    let _ = fs::hard_link(&aside, &path);
                    let _ = fs::remove_file(&aside);
                    return Ok(Acquired::Busy(moved.trim().to_string()));
                }
                let _ = fs::remove_file(&aside);
                tracing::warn!("item {id}: took over a stale lock ({why})");
            }
        }
        Ok(Acquired::Busy("contended".into()))
    }

    pub fn release(&self, id: &str) {
        let path = lock_path(&self.out, id);
        self.held.lock().expect("lock list").retain(|p| p != &path);
        let _ = fs::remove_file(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_exclude_and_stale_ones_are_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let a = Locks::new(d.path(), Duration::from_secs(600));
        assert!(matches!(a.acquire("x").unwrap(), Acquired::Held));
        // A second holder in this process is refused while the lock lives...
        // (the same pid counts as gone only for a lock this process does not hold,
        // so write one for a live foreign process: pid 1).
        std::fs::write(d.path().join(".lock-y"), format!("{} 1\n", hostname())).unwrap();
        assert!(matches!(a.acquire("y").unwrap(), Acquired::Busy(_)));
        // A dead pid on this host is stale.
        std::fs::write(
            d.path().join(".lock-z"),
            format!("{} 4000000\n", hostname()),
        )
        .unwrap();
        assert!(matches!(a.acquire("z").unwrap(), Acquired::Held));
        // Another host's lock is stale only after the limit.
        std::fs::write(d.path().join(".lock-w"), "elsewhere 12\n").unwrap();
        assert!(matches!(a.acquire("w").unwrap(), Acquired::Busy(_)));
        let quick = Locks::new(d.path(), Duration::from_secs(0));
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(quick.acquire("w").unwrap(), Acquired::Held));
        a.release("x");
        assert!(!d.path().join(".lock-x").exists());
    }

    #[test]
    fn commit_replaces_the_item_and_leftovers_are_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let t = make_tmp(d.path(), "a").unwrap();
        fs::write(t.join("f"), "1").unwrap();
        commit(d.path(), "a", &t).unwrap();
        let t = make_tmp(d.path(), "a").unwrap();
        fs::write(t.join("f"), "2").unwrap();
        commit(d.path(), "a", &t).unwrap();
        assert_eq!(fs::read_to_string(d.path().join("a/f")).unwrap(), "2");
        fs::create_dir(d.path().join(".tmp-a-123")).unwrap();
        fs::create_dir(d.path().join(".tmp-a-b-123")).unwrap();
        clean_leftovers(d.path(), "a");
        assert!(!d.path().join(".tmp-a-123").exists());
        assert!(
            d.path().join(".tmp-a-b-123").exists(),
            "another id's leftover"
        );
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
