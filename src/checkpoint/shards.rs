//! Sharded checkpoints read as one.
//!
//! The official Wan-AI repos and diffusers folders split a 14B expert over
//! several safetensors files, tied together by a `*.safetensors.index.json`
//! whose `weight_map` names the shard of every tensor. baton accepts the
//! index itself, or the folder (diffusers `transformer/`), and merges the
//! shards' headers into one [`Header`] whose entries remember their file;
//! nothing downstream needs to know the set was split.

use super::{CheckpointError, Header, TensorEntry};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const INDEX_SUFFIX: &str = ".safetensors.index.json";

/// Whether `path` names a shard index (`*.safetensors.index.json`).
pub fn is_index(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(INDEX_SUFFIX))
}

/// Reads a sharded set from its index json or its folder.
pub fn read(path: &Path) -> Result<Header, CheckpointError> {
    let config = |reason: String| CheckpointError::Config {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_dir() {
        return read_index(path, path);
    }
    let entries = std::fs::read_dir(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut indexes = Vec::new();
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(INDEX_SUFFIX) {
            indexes.push(p);
        } else if name.ends_with(".safetensors") && p.is_file() {
            files.push(p);
        }
    }
    match indexes.len() {
        0 => {}
        1 => return read_index(path, &indexes[0]),
        _ => {
            indexes.sort();
            return Err(config(format!(
                "the folder holds several shard indexes ({}); name the one to load",
                names(&indexes)
            )));
        }
    }
    if files.is_empty() {
        return Err(config(
            "the folder holds no .safetensors file and no *.safetensors.index.json".into(),
        ));
    }
    files.sort();
    merge(path, &files)
}

/// Reads the shards an index names and checks that each holds the tensors
/// the index puts there. `shown` is the path the user named (the index or
/// its folder).
fn read_index(shown: &Path, index: &Path) -> Result<Header, CheckpointError> {
    let bad = |reason: String| CheckpointError::Config {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|source| CheckpointError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("index json: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("index json has no \"weight_map\" object".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| bad(format!("weight_map entry '{key}' is not a file name")))?;
        if shard.contains('/') || shard.contains('\\') || shard == ".." {
            return Err(bad(format!(
                "weight_map puts '{key}' in '{shard}', which is not a file beside the index"
            )));
        }
        by_shard.entry(shard).or_default().push(key);
    }
    if by_shard.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    let mut files = Vec::with_capacity(by_shard.len());
    for (shard, keys) in &by_shard {
        let file = dir.join(shard);
        if !file.is_file() {
            return Err(CheckpointError::MissingShard {
                index: index.to_path_buf(),
                shard: shard.to_string(),
                key: keys[0].to_string(),
                count: keys.len(),
            });
        }
        files.push(file);
    }
    let header = merge(shown, &files)?;
    for (shard, keys) in &by_shard {
        let want = files.iter().position(|f| f == &dir.join(shard));
        for key in keys {
            let found = header.tensors.get(*key).map(|e| e.file);
            if found.is_none() || found != want {
                return Err(CheckpointError::Config {
                    path: dir.join(shard),
                    reason: format!(
                        "missing tensor '{key}', which the index {} puts in this shard",
                        index.display()
                    ),
                });
            }
        }
    }
    Ok(header)
}

/// One header over `files`; a tensor in two shards is an error.
fn merge(shown: &Path, files: &[PathBuf]) -> Result<Header, CheckpointError> {
    let mut tensors = BTreeMap::new();
    let mut metadata = HashMap::new();
    let mut file_len = 0;
    for (i, file) in files.iter().enumerate() {
        let h = Header::read_file(file)?;
        file_len += h.file_len;
        metadata.extend(h.metadata);
        for (name, mut e) in h.tensors {
            if let Some(other) = tensors.get(&name).map(|o: &TensorEntry| o.file) {
                return Err(CheckpointError::Corrupt {
                    path: file.clone(),
                    reason: format!(
                        "tensor '{name}' is also in {}: the shards overlap",
                        files[other].display()
                    ),
                });
            }
            e.file = i;
            tensors.insert(name, e);
        }
    }
    Ok(Header {
        path: shown.to_path_buf(),
        files: files.to_vec(),
        tensors,
        metadata,
        file_len,
    })
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}
