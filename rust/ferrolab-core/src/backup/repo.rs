//! Opening and creating repositories; loading snapshots; reading blobs.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backup::crypto::{
    hex, random_id, unhex, KeyFile, MasterKey, Secret, ARGON2_MAX_WORK_KIB, FORMAT_VERSION,
};
use crate::backup::index::{self, Index};
use crate::backup::pack::{self, pack_key, Id, PackedBlob};
use crate::backup::snapshot::{decode_items, Item, Snapshot};
use crate::backup::store::{open_store, S3Options, Store};
use crate::backup::{chunker, BResult};
use crate::error::{BackupErrorKind, CoreError};

/// The `config` object (sealed JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    pub id: String,
    pub compression: i32,
    pub created: f64,
}

/// Objects that failed to load: (object name, why).
pub type Damaged = Vec<(String, CoreError)>;
/// Packs with their blobs.
pub type PackList = Vec<(Id, Vec<PackedBlob>)>;

/// Largest gap of other blobs that [`Repository::read_blobs`] reads over to keep one ranged read going.
pub const RUN_GAP: u64 = 64 * 1024;
/// Largest ranged read of [`Repository::read_blobs`]: a whole pack ([`crate::backup::archiver::PACK_SIZE`] and
/// its last blob, at most 512 KiB of data), so that the blobs of a pack come in one read. A restore's data thread
/// holds one such read at a time.
pub const RUN_MAX: u64 = crate::backup::archiver::PACK_SIZE as u64 + (1 << 20);

/// An open repository.
pub struct Repository {
    pub store: Arc<dyn Store>,
    pub key: Arc<MasterKey>,
    pub config: Config,
}

/// What progress callbacks receive.
#[derive(Debug, Clone, Default)]
pub struct ProgressInfo {
    pub phase: &'static str,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub done_files: u64,
    pub total_files: u64,
}

/// A progress sink (called at most about 10 times a second, from the calling thread). Returning `false`
/// cancels the operation: it stops as soon as it safely can and returns [`cancelled`]'s error; what it
/// wrote is as after a crash (complete objects only).
pub type ProgressFn<'a> = &'a (dyn Fn(&ProgressInfo) -> bool + Sync);

/// Reports progress every 100 ms from the calling thread while `running()` holds; returns false as soon as
/// `p` asks to cancel (the worker threads are left to the caller to stop).
pub(crate) fn poll_progress(
    p: ProgressFn<'_>,
    running: impl Fn() -> bool,
    info: impl Fn() -> ProgressInfo,
) -> bool {
    let mut last = std::time::Instant::now();
    while running() {
        std::thread::sleep(std::time::Duration::from_millis(20));
        if last.elapsed() >= std::time::Duration::from_millis(100) {
            last = std::time::Instant::now();
            if !p(&info()) {
                return false;
            }
        }
    }
    true
}

/// The error of a cancelled operation.
pub fn cancelled(op: &str) -> CoreError {
    CoreError::backup(BackupErrorKind::Other, format!("{op} was cancelled"))
}

pub(crate) fn corrupt(msg: impl std::fmt::Display) -> CoreError {
    CoreError::backup(BackupErrorKind::Corruption, msg)
}

fn is_not_found(e: &CoreError) -> bool {
    matches!(e, CoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

impl Repository {
    /// Creates a repository at `url` with a fresh master key wrapped by `secret`.
    pub fn init(
        url: &str,
        secret: Secret<'_>,
        compression: i32,
        s3: Option<&S3Options>,
    ) -> BResult<Self> {
        Self::init_version(url, secret, compression, s3, FORMAT_VERSION)
    }

    /// [`Repository::init`] in format `version` (1 or 2; tests make version 1 repositories with it).
    pub fn init_version(
        url: &str,
        secret: Secret<'_>,
        compression: i32,
        s3: Option<&S3Options>,
        version: u32,
    ) -> BResult<Self> {
        assert!((1..=FORMAT_VERSION).contains(&version));
        if !(1..=22).contains(&compression) {
            return Err(CoreError::value(
                "Repository.init",
                "compression",
                format!("must be a zstd level in 1..22, got {compression}"),
            ));
        }
        let store: Arc<dyn Store> = Arc::from(open_store(url, s3)?);
        store.create()?;
        let mut key = MasterKey::generate();
        key.format = version;
        let kf = KeyFile::wrap(&key, &secret, format!("{:.3}", crate::backup::lock::now()))?;
        store.put(
            &format!("keys/{}", random_id()),
            &serde_json::to_vec_pretty(&kf).expect("json"),
        )?;
        let config = Config {
            version,
            id: random_id(),
            compression,
            created: crate::backup::lock::now(),
        };
        store.put(
            "config",
            &key.seal(&serde_json::to_vec(&config).expect("json"), b"config"),
        )?;
        store.sync()?;
        Ok(Repository {
            store,
            key: Arc::new(key),
            config,
        })
    }

    /// Opens the repository at `url` with `secret`.
    pub fn open(url: &str, secret: Secret<'_>, s3: Option<&S3Options>) -> BResult<Self> {
        let not_found = |why: &str| {
            CoreError::backup(
                BackupErrorKind::RepositoryNotFound,
                format!("no repository at {url} ({why})"),
            )
        };
        let store: Arc<dyn Store> = Arc::from(open_store(url, s3)?);
        let sealed_config = match store.get("config") {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => return Err(not_found("no config object")),
            // a local path that is, or lies below, a regular file (the local store opens nothing before this)
            Err(CoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotADirectory =>
            {
                return Err(not_found(
                    "the path, or a folder on it, is a file, not a directory",
                ))
            }
            Err(e) => return Err(e),
        };
        // keys are tried cheapest first, within a total Argon2 budget, so planted keys with costly (but
        // in-range) parameters cannot make an open take long; out-of-range ones are refused unread
        let mut damaged = Vec::new();
        let mut key = None;
        let mut keys = Vec::new();
        for e in store.list("keys")? {
            let kf = match store.get(&format!("keys/{}", e.name)) {
                Ok(data) => serde_json::from_slice::<KeyFile>(&data).map_err(|e| e.to_string()),
                Err(err) if is_not_found(&err) => continue,
                Err(err) => Err(err.to_string()),
            };
            match kf {
                Ok(kf) => match kf.kdf.check() {
                    Ok(()) => keys.push((e.name, kf)),
                    Err(err) => damaged.push(format!("keys/{}: {err}", e.name)),
                },
                Err(err) => damaged.push(format!("keys/{}: {err}", e.name)),
            }
        }
        keys.sort_by_key(|(_, kf)| kf.kdf.cost());
        let mut work = 0u64;
        for (name, kf) in keys {
            work += kf.kdf.cost();
            if work > 2 * ARGON2_MAX_WORK_KIB {
                damaged.push(format!(
                    "keys/{name}: not tried (the keys tried before it used up the key derivation budget)"
                ));
                continue;
            }
            match kf.unwrap_key(&secret) {
                Ok(Some(k)) => {
                    key = Some(k);
                    break;
                }
                Ok(None) => {}
                Err(err) => damaged.push(format!("keys/{name}: {err}")),
            }
        }
        let Some(key) = key else {
            if !damaged.is_empty() {
                return Err(corrupt(format!(
                    "repository {url}: no key opened and some keys are damaged: {}",
                    damaged.join("; ")
                )));
            }
            return Err(CoreError::backup(
                BackupErrorKind::WrongPassword,
                format!(
                    "repository {url}: wrong {} (no key of the repository opens with it)",
                    match secret {
                        Secret::Password(_) => "password",
                        Secret::KeyFile(_) => "key file",
                    }
                ),
            ));
        };
        let plain = key.open(&sealed_config, b"config", &"config")?;
        let config: Config =
            serde_json::from_slice(&plain).map_err(|e| corrupt(format!("config: {e}")))?;
        let mut key = key;
        key.format = config.version;
        if !(1..=FORMAT_VERSION).contains(&config.version) {
            return Err(CoreError::backup(
                BackupErrorKind::Other,
                format!(
                    "repository {url}: unsupported format version {}",
                    config.version
                ),
            ));
        }
        Ok(Repository {
            store,
            key: Arc::new(key),
            config,
        })
    }

    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// All snapshots that decode, sorted by time; damaged ones are returned separately.
    pub fn load_snapshots(&self) -> BResult<(Vec<Snapshot>, Damaged)> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for e in self.store.list("snapshots")? {
            let data = match self.store.get(&format!("snapshots/{}", e.name)) {
                Ok(d) => d,
                Err(err) if is_not_found(&err) => continue,
                Err(err) => return Err(err),
            };
            match Snapshot::decode(&self.key, &e.name, &data) {
                Ok(s) => out.push(s),
                Err(err) => bad.push((e.name, err)),
            }
        }
        out.sort_by(|a, b| a.time.total_cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok((out, bad))
    }

    /// One snapshot by full id.
    pub fn load_snapshot(&self, id: &str) -> BResult<Snapshot> {
        if unhex::<32>(id).is_none() {
            return Err(CoreError::value(
                "restore",
                "snapshot",
                format!("'{id}' is not a snapshot id"),
            ));
        }
        let data = match self.store.get(&format!("snapshots/{id}")) {
            Ok(d) => d,
            Err(e) if is_not_found(&e) => {
                return Err(CoreError::value(
                    "restore",
                    "snapshot",
                    format!("no snapshot {id}"),
                ))
            }
            Err(e) => return Err(e),
        };
        Snapshot::decode(&self.key, id, &data)
    }

    /// Loads the index, adding packs that no index lists (left by an interrupted backup) from their headers.
    /// Returns the index, the damaged index objects, and the packs that were recovered.
    pub fn load_index(&self) -> BResult<(Index, Damaged, PackList)> {
        let (mut idx, bad) = index::load_all(&*self.store, &self.key)?;
        let mut recovered = Vec::new();
        for e in self.store.list("data")? {
            let Some(id) = pack_id_from_name(&e.name) else {
                continue;
            };
            if idx.has_pack(&id) {
                continue;
            }
            if let Ok(blobs) = self.read_pack_header(&id, e.size) {
                idx.add_pack(&id, &blobs);
                recovered.push((id, blobs));
            }
        }
        Ok((idx, bad, recovered))
    }

    /// Reads and parses a pack's header with two range reads.
    pub fn read_pack_header(&self, id: &Id, size: u64) -> BResult<Vec<PackedBlob>> {
        let key = pack_key(id);
        if size < 4 {
            return Err(corrupt(format!("pack {}: truncated", hex(id))));
        }
        let tail = self.store.get_range(&key, size - 4, 4)?;
        let hl = u32::from_le_bytes(tail[..4].try_into().unwrap()) as u64;
        if hl + 4 > size {
            return Err(corrupt(format!("pack {}: bad header length", hex(id))));
        }
        let h = self.store.get_range(&key, size - 4 - hl, hl)?;
        let blobs = pack::parse_header(&self.key, &h, id)?;
        let end = blobs
            .last()
            .map_or(0, |b| b.offset as u64 + b.length as u64);
        if end != size - 4 - hl {
            return Err(corrupt(format!(
                "pack {}: header does not describe the blob area",
                hex(id)
            )));
        }
        Ok(blobs)
    }

    /// Reads, opens, decodes and checks the blobs `ids`, passing each to `sink` in order. Neighbouring blobs
    /// of one pack (ascending, with gaps of at most [`RUN_GAP`] bytes, up to [`RUN_MAX`] bytes in all) come in
    /// one ranged read: on S3 one request instead of one per blob, locally one read instead of one per blob.
    pub fn read_blobs(
        &self,
        idx: &Index,
        ids: &[Id],
        dctx: &mut zstd::bulk::Decompressor<'static>,
        what: &dyn Fn() -> String,
        mut sink: impl FnMut(Vec<u8>) -> BResult<()>,
    ) -> BResult<()> {
        let locate = |id: &Id| {
            idx.get(id).ok_or_else(|| {
                corrupt(format!(
                    "{}: chunk {} is missing from the repository",
                    what(),
                    hex(id)
                ))
            })
        };
        let mut i = 0;
        while i < ids.len() {
            let (pack, first) = locate(&ids[i])?;
            let start = first.offset as u64;
            let mut end = start + first.length as u64;
            let mut run = vec![(ids[i], first)];
            for id in &ids[i + 1..] {
                let Some((p, l)) = idx.get(id) else { break };
                let (o, e) = (l.offset as u64, l.offset as u64 + l.length as u64);
                if p != pack || o < end || o - end > RUN_GAP || e - start > RUN_MAX {
                    break;
                }
                end = e;
                run.push((*id, l));
            }
            i += run.len();
            let mut data = match self.store.get_range(&pack_key(&pack), start, end - start) {
                Ok(d) => d,
                Err(CoreError::Io { source, context })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    // the chunk named: of a truncated pack, the first of the run that cannot be read on its own
                    // (the run's first when the whole pack is missing)
                    let unreadable = |l: &&(Id, index::Location)| {
                        let (o, n) = (l.1.offset as u64, l.1.length as u64);
                        self.store.get_range(&pack_key(&pack), o, n).is_err()
                    };
                    let culprit = match source.kind() {
                        std::io::ErrorKind::UnexpectedEof => run.iter().find(unreadable),
                        _ => None,
                    }
                    .map_or(run[0].0, |r| r.0);
                    return Err(corrupt(format!(
                        "{}: chunk {} in pack {}: the pack is missing or truncated ({context}: {source})",
                        what(),
                        hex(&culprit),
                        hex(&pack)
                    )));
                }
                Err(e) => return Err(e),
            };
            for (id, loc) in run {
                let at = (loc.offset as u64 - start) as usize;
                // the run's blobs are disjoint (offsets increase), so each can be decrypted where it lies
                let sealed = &mut data[at..at + loc.length as usize];
                let plain =
                    decode_blob_in_place(&self.key, &id, sealed, loc.raw_len as usize, dctx)
                        .map_err(|m| {
                            corrupt(format!(
                                "{}: chunk {} in pack {}: {m}",
                                what(),
                                hex(&id),
                                hex(&pack)
                            ))
                        })?;
                sink(plain)?;
            }
        }
        Ok(())
    }

    /// The items of a snapshot (its tree blobs, concatenated and decoded). The tree blobs lie side by side in
    /// their packs and come in few ranged reads ([`Repository::read_blobs`]): read one by one, a snapshot of
    /// 2,000 files in 40 folders took 90 requests on S3.
    pub fn load_items(&self, snap: &Snapshot, idx: &Index) -> BResult<Vec<Item>> {
        let mut dctx = zstd::bulk::Decompressor::new().expect("zstd");
        let mut stream = Vec::new();
        let what = || format!("snapshot {} (metadata)", snap.id);
        self.read_blobs(idx, &snap.tree_ids()?, &mut dctx, &what, |b| {
            stream.extend_from_slice(&b);
            Ok(())
        })?;
        decode_items(&stream, &format!("snapshot {}", snap.id))
    }

    /// Chunk ids referenced by snapshots → (blob, item path) for naming damaged data in reports.
    pub fn blob_owners(items: &[Item]) -> HashMap<Id, usize> {
        let mut m = HashMap::new();
        for (i, it) in items.iter().enumerate() {
            for c in &it.chunks {
                m.entry(*c).or_insert(i);
            }
        }
        m
    }
}

/// Opens a sealed blob, decodes it and checks its id.
pub fn decode_blob(
    key: &MasterKey,
    id: &Id,
    sealed: &[u8],
    raw_len: usize,
    dctx: &mut zstd::bulk::Decompressor<'static>,
) -> Result<Vec<u8>, String> {
    decode_blob_in_place(key, id, &mut sealed.to_vec(), raw_len, dctx)
}

/// [`decode_blob`] decrypting `sealed` in place (its bytes are the plaintext payload afterwards): a restore
/// reads each blob once and needs no copy of its ciphertext.
pub fn decode_blob_in_place(
    key: &MasterKey,
    id: &Id,
    sealed: &mut [u8],
    raw_len: usize,
    dctx: &mut zstd::bulk::Decompressor<'static>,
) -> Result<Vec<u8>, String> {
    let payload = key
        .open_in_place(sealed, id)
        .ok_or("authentication failed (the data was modified or damaged)")?;
    let plain = chunker::decode(payload, raw_len, dctx)?;
    if key.blob_id(&plain) != *id {
        return Err("content does not match its id".into());
    }
    Ok(plain)
}

/// `ab/<64 hex>` → id.
pub fn pack_id_from_name(name: &str) -> Option<Id> {
    let file = name.rsplit('/').next()?;
    unhex::<32>(file)
}
