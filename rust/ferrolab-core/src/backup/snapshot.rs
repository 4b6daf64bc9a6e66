//! Snapshots and the item stream (the metadata of every file, directory and symlink).
//!
//! A snapshot object (`snapshots/<random id>`) is sealed JSON naming the tree blobs that hold its item
//! stream. The item stream is JSON lines, one item per line in depth-first, name-sorted order, chunked
//! with the metadata chunker and stored as `tree` blobs, so an unchanged tree costs nothing in the next
//! snapshot. Paths are relative to `/` (no leading slash); names that are not UTF-8 are stored hex-encoded
//! in `path_hex` / `target_hex` instead.

use serde::{Deserialize, Serialize};

use crate::backup::crypto::{hex, unhex, unhex_vec, MasterKey};
use crate::backup::pack::Id;
use crate::backup::BResult;
use crate::error::{BackupErrorKind, CoreError};

/// Kinds of items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// One file, directory or symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// path relative to `/` as raw bytes
    pub path: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub size: u64,
    pub target: Vec<u8>,
    pub chunks: Vec<Id>,
}

#[derive(Serialize, Deserialize)]
struct ItemJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_hex: Option<String>,
    kind: Kind,
    mode: u32,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    mtime_ns: i64,
    #[serde(default)]
    ctime_ns: i64,
    #[serde(default)]
    inode: u64,
    #[serde(default)]
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chunks: Vec<String>,
}

fn split_bytes(b: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(b) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(hex(b))),
    }
}

fn corrupt(msg: String) -> CoreError {
    CoreError::backup(BackupErrorKind::Corruption, msg)
}

impl Item {
    /// The path for messages (lossy UTF-8, with a leading slash).
    pub fn display(&self) -> String {
        format!("/{}", String::from_utf8_lossy(&self.path))
    }
}

/// Encodes items as JSON lines.
pub fn encode_items(items: &[Item]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() * 160);
    for it in items {
        let (path, path_hex) = split_bytes(&it.path);
        let (target, target_hex) = if it.kind == Kind::Symlink {
            split_bytes(&it.target)
        } else {
            (None, None)
        };
        let j = ItemJson {
            path,
            path_hex,
            kind: it.kind,
            mode: it.mode,
            uid: it.uid,
            gid: it.gid,
            mtime_ns: it.mtime_ns,
            ctime_ns: it.ctime_ns,
            inode: it.inode,
            size: it.size,
            target,
            target_hex,
            chunks: it.chunks.iter().map(|c| hex(c)).collect(),
        };
        serde_json::to_writer(&mut out, &j).expect("serializable");
        out.push(b'\n');
    }
    out
}

/// Decodes JSON lines into items; `what` names the snapshot in errors.
pub fn decode_items(data: &[u8], what: &str) -> BResult<Vec<Item>> {
    let mut out = Vec::new();
    for (n, line) in data.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let j: ItemJson =
            serde_json::from_slice(line).map_err(|e| corrupt(format!("{what}: item {n}: {e}")))?;
        let path = match (j.path, j.path_hex) {
            (Some(p), None) => p.into_bytes(),
            (None, Some(h)) => {
                unhex_vec(&h).ok_or_else(|| corrupt(format!("{what}: item {n}: bad path_hex")))?
            }
            _ => {
                return Err(corrupt(format!(
                    "{what}: item {n}: needs exactly one of path, path_hex"
                )))
            }
        };
        let target = match (j.target, j.target_hex) {
            (Some(t), None) => t.into_bytes(),
            (None, Some(h)) => {
                unhex_vec(&h).ok_or_else(|| corrupt(format!("{what}: item {n}: bad target_hex")))?
            }
            _ => Vec::new(),
        };
        let mut chunks = Vec::with_capacity(j.chunks.len());
        for c in &j.chunks {
            chunks.push(
                unhex::<32>(c).ok_or_else(|| corrupt(format!("{what}: item {n}: bad chunk id")))?,
            );
        }
        out.push(Item {
            path,
            kind: j.kind,
            mode: j.mode,
            uid: j.uid,
            gid: j.gid,
            mtime_ns: j.mtime_ns,
            ctime_ns: j.ctime_ns,
            inode: j.inode,
            size: j.size,
            target,
            chunks,
        });
    }
    Ok(out)
}

/// A snapshot object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// seconds since the epoch (UTC)
    pub time: f64,
    pub hostname: String,
    /// the roots, for display (lossy when a root is not UTF-8; see `paths_hex`)
    pub paths: Vec<String>,
    /// the roots as hex bytes, present when some root is not UTF-8
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths_hex: Vec<String>,
    pub tags: Vec<String>,
    pub parent: Option<String>,
    /// tree blob ids (hex) holding the item stream
    pub tree: Vec<String>,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub added_bytes: u64,
    pub duration: f64,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// the object name (not stored)
    #[serde(skip)]
    pub id: String,
}

impl Snapshot {
    pub fn encode(&self, key: &MasterKey) -> Vec<u8> {
        key.seal_object(
            "snapshot",
            &self.id,
            &serde_json::to_vec(self).expect("serializable"),
        )
    }

    pub fn decode(key: &MasterKey, id: &str, sealed: &[u8]) -> BResult<Self> {
        let what = format!("snapshot {id}");
        let plain = key.open_object("snapshot", id, sealed)?;
        let mut s: Snapshot =
            serde_json::from_slice(&plain).map_err(|e| corrupt(format!("{what}: {e}")))?;
        if s.version != 1 {
            return Err(CoreError::backup(
                BackupErrorKind::Other,
                format!("{what}: unsupported snapshot version {}", s.version),
            ));
        }
        s.id = id.to_string();
        Ok(s)
    }

    /// The roots as raw bytes (lossless).
    pub fn root_bytes(&self) -> Vec<Vec<u8>> {
        if self.paths_hex.len() == self.paths.len() {
            if let Some(v) = self
                .paths_hex
                .iter()
                .map(|h| unhex_vec(h))
                .collect::<Option<Vec<_>>>()
            {
                return v;
            }
        }
        self.paths.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    /// Display and hex forms of raw root paths.
    pub fn encode_roots(roots: &[Vec<u8>]) -> (Vec<String>, Vec<String>) {
        let shown = roots
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect();
        let hexed = if roots.iter().all(|r| std::str::from_utf8(r).is_ok()) {
            Vec::new()
        } else {
            roots.iter().map(|r| hex(r)).collect()
        };
        (shown, hexed)
    }

    pub fn tree_ids(&self) -> BResult<Vec<Id>> {
        self.tree
            .iter()
            .map(|t| {
                unhex::<32>(t).ok_or_else(|| corrupt(format!("snapshot {}: bad tree id", self.id)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_incl_non_utf8() {
        let items = vec![
            Item {
                path: b"home/a".to_vec(),
                kind: Kind::Dir,
                mode: 0o40755,
                uid: 1,
                gid: 2,
                mtime_ns: -5,
                ctime_ns: 7,
                inode: 9,
                size: 0,
                target: vec![],
                chunks: vec![],
            },
            Item {
                path: b"home/a/\xff\xfe".to_vec(),
                kind: Kind::Symlink,
                mode: 0o120777,
                uid: 0,
                gid: 0,
                mtime_ns: 1,
                ctime_ns: 1,
                inode: 3,
                size: 0,
                target: b"../\x80x".to_vec(),
                chunks: vec![],
            },
            Item {
                path: "home/a/ü.txt".as_bytes().to_vec(),
                kind: Kind::File,
                mode: 0o100644,
                uid: 0,
                gid: 0,
                mtime_ns: 1_700_000_000_123_456_789,
                ctime_ns: 1,
                inode: 4,
                size: 10,
                target: vec![],
                chunks: vec![[7; 32], [8; 32]],
            },
        ];
        let enc = encode_items(&items);
        assert_eq!(decode_items(&enc, "s").unwrap(), items);
        assert!(decode_items(b"{\"kind\":\"file\"}\n", "s").is_err());
    }
}
