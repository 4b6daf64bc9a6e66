//! Pack files: many sealed blobs in one object.
//!
//! Layout: `blob_0 || blob_1 || ... || sealed header || u32-le length of the sealed header`. Each blob is
//! sealed on its own (its id is the associated data), so one blob can be read with one range request. The
//! header lists, per blob: type (u8: 0 data, 1 tree), id (32 bytes), sealed length (u32), plaintext
//! length (u32); offsets are cumulative. The pack's name is the unkeyed BLAKE3 hash of all its bytes, so a
//! pack can be checked for damage without the key.

use crate::backup::crypto::{hex, MasterKey};
use crate::backup::BResult;
use crate::error::{BackupErrorKind, CoreError};

pub type Id = [u8; 32];

/// Blob types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobType {
    Data = 0,
    Tree = 1,
}

impl BlobType {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(BlobType::Data),
            1 => Some(BlobType::Tree),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            BlobType::Data => "data",
            BlobType::Tree => "tree",
        }
    }
}

/// One blob as listed in a pack header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedBlob {
    pub ty: BlobType,
    pub id: Id,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
}

const MAGIC: &[u8; 4] = b"FLP1";
const ENTRY: usize = 1 + 32 + 4 + 4;

/// The size in bytes of a pack holding exactly `blobs` (blob area, sealed header, length).
pub fn pack_size(blobs: &[PackedBlob]) -> u64 {
    blobs.iter().map(|b| b.length as u64).sum::<u64>()
        + (8 + blobs.len() * ENTRY + crate::backup::crypto::SEAL_OVERHEAD + 4) as u64
}

/// The object key of a pack.
pub fn pack_key(id: &Id) -> String {
    let h = hex(id);
    format!("data/{}/{}", &h[..2], h)
}

/// Builds a pack in memory (the sealed blobs are kept as they come; nothing is copied).
#[derive(Default)]
pub struct PackBuilder {
    pub parts: Vec<Vec<u8>>,
    pub blobs: Vec<PackedBlob>,
    len: usize,
}

/// A finished pack: its id, its parts in order (blobs, sealed header, header length) and its blobs.
pub struct FinishedPack {
    pub id: Id,
    pub parts: Vec<Vec<u8>>,
    pub blobs: Vec<PackedBlob>,
}

impl FinishedPack {
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn slices(&self) -> Vec<&[u8]> {
        self.parts.iter().map(|p| &p[..]).collect()
    }
}

impl PackBuilder {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }
    /// Appends an already sealed blob (taking ownership).
    pub fn add_owned(&mut self, ty: BlobType, id: Id, sealed: Vec<u8>, raw_len: u32) {
        self.blobs.push(PackedBlob {
            ty,
            id,
            offset: self.len as u32,
            length: sealed.len() as u32,
            raw_len,
        });
        self.len += sealed.len();
        self.parts.push(sealed);
    }
    /// Appends an already sealed blob (copying it).
    pub fn add(&mut self, ty: BlobType, id: Id, sealed: &[u8], raw_len: u32) {
        self.add_owned(ty, id, sealed.to_vec(), raw_len)
    }
    /// Appends the sealed header and computes the pack id.
    pub fn finish(mut self, key: &MasterKey) -> FinishedPack {
        let mut h = Vec::with_capacity(8 + self.blobs.len() * ENTRY);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&(self.blobs.len() as u32).to_le_bytes());
        for b in &self.blobs {
            h.push(b.ty as u8);
            h.extend_from_slice(&b.id);
            h.extend_from_slice(&b.length.to_le_bytes());
            h.extend_from_slice(&b.raw_len.to_le_bytes());
        }
        let sealed = key.seal(&h, b"pack header");
        let hl = (sealed.len() as u32).to_le_bytes().to_vec();
        self.parts.push(sealed);
        self.parts.push(hl);
        let mut hasher = blake3::Hasher::new();
        for p in &self.parts {
            hasher.update(p);
        }
        FinishedPack {
            id: *hasher.finalize().as_bytes(),
            parts: self.parts,
            blobs: self.blobs,
        }
    }
}

fn corrupt(what: String) -> CoreError {
    CoreError::backup(BackupErrorKind::Corruption, what)
}

/// Parses a sealed header (the bytes between the last blob and the trailing length).
pub fn parse_header(key: &MasterKey, sealed: &[u8], pack: &Id) -> BResult<Vec<PackedBlob>> {
    let name = format!("pack {}", hex(pack));
    let h = key.open(sealed, b"pack header", &format_args!("{name}: header"))?;
    if h.len() < 8 || &h[..4] != MAGIC {
        return Err(corrupt(format!("{name}: header has no pack magic")));
    }
    let n = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
    if h.len() != 8 + n * ENTRY {
        return Err(corrupt(format!(
            "{name}: header length does not match its {n} entries"
        )));
    }
    let mut out = Vec::with_capacity(n);
    let mut off = 0u64;
    for e in h[8..].chunks_exact(ENTRY) {
        let ty = BlobType::from_u8(e[0])
            .ok_or_else(|| corrupt(format!("{name}: bad blob type {}", e[0])))?;
        let id: Id = e[1..33].try_into().unwrap();
        let length = u32::from_le_bytes(e[33..37].try_into().unwrap());
        let raw_len = u32::from_le_bytes(e[37..41].try_into().unwrap());
        out.push(PackedBlob {
            ty,
            id,
            offset: off as u32,
            length,
            raw_len,
        });
        off += length as u64;
        if off > u32::MAX as u64 {
            return Err(corrupt(format!("{name}: blob offsets overflow")));
        }
    }
    Ok(out)
}

/// Splits a whole pack into its blob area and header and parses the header.
pub fn parse_pack(key: &MasterKey, data: &[u8], pack: &Id) -> BResult<Vec<PackedBlob>> {
    let name = format!("pack {}", hex(pack));
    if data.len() < 4 {
        return Err(corrupt(format!("{name}: truncated ({} bytes)", data.len())));
    }
    let hl = u32::from_le_bytes(data[data.len() - 4..].try_into().unwrap()) as usize;
    if hl + 4 > data.len() {
        return Err(corrupt(format!(
            "{name}: header length {hl} exceeds the pack size {}",
            data.len()
        )));
    }
    let hstart = data.len() - 4 - hl;
    let blobs = parse_header(key, &data[hstart..data.len() - 4], pack)?;
    let end = blobs
        .last()
        .map_or(0, |b| b.offset as usize + b.length as usize);
    if end != hstart {
        return Err(corrupt(format!(
            "{name}: header does not describe the blob area ({end} != {hstart} bytes)"
        )));
    }
    Ok(blobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_parse() {
        let k = MasterKey::generate();
        let mut b = PackBuilder::default();
        for i in 0..5u8 {
            let sealed = k.seal(&[i; 100], &[i; 32]);
            b.add(BlobType::Data, [i; 32], &sealed, 100);
        }
        let fp = b.finish(&k);
        let (id, data, blobs) = (fp.id, fp.parts.concat(), fp.blobs);
        assert_eq!(id, *blake3::hash(&data).as_bytes());
        let parsed = parse_pack(&k, &data, &id).unwrap();
        assert_eq!(parsed, blobs);
        assert_eq!(pack_size(&blobs), data.len() as u64);
        let mut bad = data.clone();
        let n = bad.len();
        bad[n - 10] ^= 1;
        assert!(parse_pack(&k, &bad, &id).is_err());
        assert!(parse_pack(&k, &data[..3], &id).is_err());
    }
}
