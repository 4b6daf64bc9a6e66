//! The index: where every blob lives (pack, offset, length).
//!
//! Index objects (`index/<random id>`) are sealed, zstd-compressed JSON:
//! `{"version": 1, "packs": [{"id": hex, "blobs": [[id hex, type, offset, length, raw length], ...]}]}`.
//! Several index objects may list the same blob (concurrent backups); any location is valid. In memory
//! the index is a hash map of about 60 bytes per blob.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::backup::crypto::{hex, unhex, MasterKey};
use crate::backup::pack::{BlobType, Id, PackedBlob};
use crate::backup::store::Store;
use crate::backup::BResult;
use crate::error::{BackupErrorKind, CoreError};

/// Where a blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
    pub ty: BlobType,
}

/// The in-memory index.
#[derive(Default)]
pub struct Index {
    pub packs: Vec<Id>,
    pack_pos: HashMap<Id, u32>,
    pub blobs: HashMap<Id, Location>,
    /// every blob each pack holds (as first listed), by pack slot
    pub pack_blobs: Vec<Vec<PackedBlob>>,
    /// names of the index objects this was loaded from
    pub files: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct PackJson {
    id: String,
    blobs: Vec<(String, u8, u32, u32, u32)>,
}

#[derive(Serialize, Deserialize)]
struct IndexJson {
    version: u32,
    packs: Vec<PackJson>,
}

fn corrupt(msg: String) -> CoreError {
    CoreError::backup(BackupErrorKind::Corruption, msg)
}

impl Index {
    pub fn pack_slot(&mut self, id: &Id) -> u32 {
        if let Some(&p) = self.pack_pos.get(id) {
            return p;
        }
        let p = self.packs.len() as u32;
        self.packs.push(*id);
        self.pack_blobs.push(Vec::new());
        self.pack_pos.insert(*id, p);
        p
    }

    /// The slot of a known pack.
    pub fn slot(&self, id: &Id) -> Option<usize> {
        self.pack_pos.get(id).map(|&p| p as usize)
    }

    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_pos.contains_key(id)
    }

    /// Adds a pack's blobs (keeps an existing location of a blob).
    pub fn add_pack(&mut self, pack: &Id, blobs: &[PackedBlob]) {
        let p = self.pack_slot(pack);
        if self.pack_blobs[p as usize].is_empty() {
            self.pack_blobs[p as usize] = blobs.to_vec();
        }
        for b in blobs {
            self.blobs.entry(b.id).or_insert(Location {
                pack: p,
                offset: b.offset,
                length: b.length,
                raw_len: b.raw_len,
                ty: b.ty,
            });
        }
    }

    pub fn get(&self, id: &Id) -> Option<(Id, Location)> {
        self.blobs
            .get(id)
            .map(|l| (self.packs[l.pack as usize], *l))
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    /// Decodes one index object and adds it.
    pub fn load_object(
        &mut self,
        key: &MasterKey,
        name: &str,
        sealed: &[u8],
    ) -> BResult<Vec<(Id, Vec<PackedBlob>)>> {
        let packs = decode(key, name, sealed)?;
        for (id, blobs) in &packs {
            self.add_pack(id, blobs);
        }
        self.files.push(name.to_string());
        Ok(packs)
    }
}

/// The most a decoded index object may hold (a planted one cannot exhaust memory): 256 MiB of JSON, about
/// 1.5 million blobs.
const MAX_JSON: u64 = 256 << 20;

/// Encodes the index object `index/<name>` listing `packs`.
pub fn encode(key: &MasterKey, name: &str, packs: &[(Id, Vec<PackedBlob>)]) -> Vec<u8> {
    let j = IndexJson {
        version: 1,
        packs: packs
            .iter()
            .map(|(id, blobs)| PackJson {
                id: hex(id),
                blobs: blobs
                    .iter()
                    .map(|b| (hex(&b.id), b.ty as u8, b.offset, b.length, b.raw_len))
                    .collect(),
            })
            .collect(),
    };
    let json = serde_json::to_vec(&j).expect("serializable");
    let z = zstd::bulk::compress(&json, 3).expect("zstd compress");
    key.seal_object("index", name, &z)
}

/// Writes a new index object (random name) listing `packs`; returns its size in bytes.
pub fn put(store: &dyn Store, key: &MasterKey, packs: &[(Id, Vec<PackedBlob>)]) -> BResult<u64> {
    let name = crate::backup::crypto::random_id();
    let obj = encode(key, &name, packs);
    store.put(&format!("index/{name}"), &obj)?;
    Ok(obj.len() as u64)
}

/// Decodes an index object.
pub fn decode(key: &MasterKey, name: &str, sealed: &[u8]) -> BResult<Vec<(Id, Vec<PackedBlob>)>> {
    let what = format!("index {name}");
    let z = key.open_object("index", name, sealed)?;
    let mut json = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            zstd::stream::Decoder::new(&z[..]).map_err(|e| corrupt(format!("{what}: {e}")))?,
            MAX_JSON + 1,
        ),
        &mut json,
    )
    .map_err(|e| corrupt(format!("{what}: {e}")))?;
    if json.len() as u64 > MAX_JSON {
        return Err(corrupt(format!(
            "{what}: decompresses to more than {MAX_JSON} bytes"
        )));
    }
    let j: IndexJson =
        serde_json::from_slice(&json).map_err(|e| corrupt(format!("{what}: {e}")))?;
    if j.version != 1 {
        return Err(CoreError::backup(
            BackupErrorKind::Other,
            format!("{what}: unsupported index version {}", j.version),
        ));
    }
    let mut out = Vec::with_capacity(j.packs.len());
    for p in j.packs {
        let id = unhex::<32>(&p.id).ok_or_else(|| corrupt(format!("{what}: bad pack id")))?;
        let mut blobs = Vec::with_capacity(p.blobs.len());
        for (bid, ty, offset, length, raw_len) in p.blobs {
            blobs.push(PackedBlob {
                id: unhex::<32>(&bid).ok_or_else(|| corrupt(format!("{what}: bad blob id")))?,
                ty: BlobType::from_u8(ty)
                    .ok_or_else(|| corrupt(format!("{what}: bad blob type")))?,
                offset,
                length,
                raw_len,
            });
        }
        out.push((id, blobs));
    }
    Ok(out)
}

/// Loads every index object; damaged ones are returned as errors (name, error) instead of failing.
pub fn load_all(store: &dyn Store, key: &MasterKey) -> BResult<(Index, Vec<(String, CoreError)>)> {
    let mut idx = Index::default();
    let mut bad = Vec::new();
    for e in store.list("index")? {
        let data = match store.get(&format!("index/{}", e.name)) {
            Ok(d) => d,
            Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                continue
            }
            Err(err) => return Err(err),
        };
        if let Err(err) = idx.load_object(key, &e.name, &data) {
            bad.push((e.name, err));
        }
    }
    Ok((idx, bad))
}
