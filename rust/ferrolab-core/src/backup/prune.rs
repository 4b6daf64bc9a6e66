//! `forget` (delete snapshot objects) and `prune` (delete data no snapshot needs).
//!
//! Prune holds the exclusive lock. It refuses to run when any snapshot or tree cannot be read (it could not
//! know what is still needed). Crash-safe order: new packs (copies of the still-used blobs of mostly-unused
//! packs) → new index objects covering every kept pack → delete the old index objects → delete the unused
//! and rewritten packs. A crash at any step leaves every snapshot restorable.
//!
//! Prune deletes only what it can prove is the repository's own: packs whose header or index entry
//! authenticates under the key, index objects that decode, and packs it read back whole with a matching
//! BLAKE3 name before copying from them. Anything that does not decode (a damaged or planted object) is left
//! where it is for `verify` to report.

use std::collections::HashSet;

use crate::backup::crypto::{hex, unhex};
use crate::backup::index;
use crate::backup::lock::Lock;
use crate::backup::pack::{pack_key, Id, PackBuilder, PackedBlob};
use crate::backup::repo::{corrupt, pack_id_from_name, ProgressFn, ProgressInfo, Repository};
use crate::backup::BResult;
use crate::error::CoreError;

/// What prune did.
#[derive(Debug, Default, Clone)]
pub struct PruneStats {
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    pub blobs_removed: u64,
    pub bytes_freed: u64,
}

/// A partly used pack is rewritten when more than this share of it is unused.
const REWRITE_UNUSED: f64 = 0.2;
const INDEX_PACKS_PER_OBJECT: usize = 1000;

/// Deletes snapshot objects (ids must be full ids).
pub fn forget(repo: &Repository, ids: &[String]) -> BResult<()> {
    for id in ids {
        if unhex::<32>(id).is_none() {
            return Err(CoreError::value(
                "forget",
                "ids",
                format!("'{id}' is not a snapshot id"),
            ));
        }
    }
    let _lock = Lock::acquire(repo.store.clone(), repo.key.clone(), false)?;
    for id in ids {
        repo.store.delete(&format!("snapshots/{id}"))?;
    }
    repo.store.sync()
}

/// Removes unused data.
pub fn prune(repo: &Repository, progress: Option<ProgressFn<'_>>) -> BResult<PruneStats> {
    let lock = Lock::acquire(repo.store.clone(), repo.key.clone(), true)?;
    let (idx, bad_idx, _) = repo.load_index()?;
    let (snaps, bad) = repo.load_snapshots()?;
    if let Some((name, e)) = bad.first() {
        return Err(corrupt(format!(
            "prune refused: snapshot {name} cannot be read ({e}); forget it or repair the repository first"
        )));
    }
    let mut used: HashSet<Id> = HashSet::new();
    for s in &snaps {
        used.extend(s.tree_ids()?);
        let items = repo.load_items(s, &idx).map_err(|e| {
            corrupt(format!(
                "prune refused: snapshot {} cannot be read: {e}",
                s.id
            ))
        })?;
        for it in items {
            used.extend(it.chunks);
        }
    }
    if let Some(m) = used.iter().find(|b| !idx.contains(b)) {
        return Err(corrupt(format!(
            "prune refused: chunk {} used by a snapshot is missing from the repository (run verify)",
            hex(m)
        )));
    }
    let listed: Vec<(Id, u64)> = repo
        .store
        .list("data")?
        .into_iter()
        .filter_map(|e| pack_id_from_name(&e.name).map(|id| (id, e.size)))
        .collect();
    let mut stats = PruneStats::default();
    let mut keep: Vec<(Id, Vec<PackedBlob>)> = Vec::new();
    let mut rewrite: Vec<(Id, Vec<PackedBlob>)> = Vec::new(); // blobs to copy
    let mut delete: Vec<(Id, u64)> = Vec::new();
    for (pid, size) in &listed {
        let Some(slot) = idx.slot(pid) else {
            continue; // its header does not decode: not provably ours, left for verify to report
        };
        let blobs = &idx.pack_blobs[slot];
        let live: Vec<PackedBlob> = blobs
            .iter()
            .filter(|b| used.contains(&b.id) && idx.get(&b.id).is_some_and(|(p, _)| p == *pid))
            .copied()
            .collect();
        let live_bytes: u64 = live.iter().map(|b| b.length as u64).sum();
        let all_bytes: u64 = blobs.iter().map(|b| b.length as u64).sum();
        stats.blobs_removed += (blobs.len() - live.len()) as u64;
        if live.is_empty() {
            delete.push((*pid, *size));
        } else if live.len() == blobs.len()
            || (all_bytes - live_bytes) as f64 <= REWRITE_UNUSED * all_bytes as f64
        {
            keep.push((*pid, blobs.clone()));
        } else {
            rewrite.push((*pid, live));
            delete.push((*pid, *size));
        }
    }
    // packs with used blobs that only exist in the index's view but not on the store are kept in the index
    // (verify reports them); nothing to do here.

    // copy live blobs of rewritten packs
    let mut new_packs: Vec<(Id, Vec<PackedBlob>)> = Vec::new();
    let mut pb = PackBuilder::default();
    let total = rewrite.len() as u64;
    for (n, (pid, live)) in rewrite.iter().enumerate() {
        let data = repo.store.get(&pack_key(pid))?;
        if *blake3::hash(&data).as_bytes() != *pid {
            return Err(corrupt(format!(
                "prune refused: pack {} does not match its name (BLAKE3); run verify",
                hex(pid)
            )));
        }
        for b in live {
            let sealed = data
                .get(b.offset as usize..b.offset as usize + b.length as usize)
                .ok_or_else(|| {
                    corrupt(format!(
                        "pack {}: blob {} out of range",
                        hex(pid),
                        hex(&b.id)
                    ))
                })?;
            pb.add(b.ty, b.id, sealed, b.raw_len);
            if pb.len() >= crate::backup::archiver::PACK_SIZE {
                let fp = std::mem::take(&mut pb).finish(&repo.key);
                repo.store.put_parts(&pack_key(&fp.id), &fp.slices())?;
                new_packs.push((fp.id, fp.blobs));
            }
        }
        stats.packs_rewritten += 1;
        if let Some(p) = progress {
            let _ = p(&ProgressInfo {
                phase: "prune",
                done_bytes: 0,
                total_bytes: 0,
                done_files: n as u64 + 1,
                total_files: total,
            });
        }
    }
    if !pb.is_empty() {
        let fp = pb.finish(&repo.key);
        repo.store.put_parts(&pack_key(&fp.id), &fp.slices())?;
        new_packs.push((fp.id, fp.blobs));
    }
    if delete.is_empty() && new_packs.is_empty() && idx.files.len() <= 1 && bad_idx.is_empty() {
        return Ok(stats);
    }
    repo.store.sync()?;
    // new index objects for everything kept
    keep.extend(new_packs);
    for part in keep.chunks(INDEX_PACKS_PER_OBJECT) {
        index::put(&*repo.store, &repo.key, part)?;
    }
    repo.store.sync()?;
    // nothing is deleted unless the exclusive lock still holds (no backup can have started meanwhile)
    lock.confirm()?;
    // only index objects that decoded are replaced; damaged ones stay for verify to report (their packs were
    // recovered from the pack headers and are in the new index)
    for name in &idx.files {
        repo.store.delete(&format!("index/{name}"))?;
    }
    repo.store.sync()?;
    for (pid, size) in &delete {
        repo.store.delete(&pack_key(pid))?;
        stats.packs_deleted += 1;
        stats.bytes_freed += size;
    }
    repo.store.sync()?;
    tracing::info!(
        target: "ferrolab.backup",
        repository = %repo.store.url(),
        packs_deleted = stats.packs_deleted,
        packs_rewritten = stats.packs_rewritten,
        bytes_freed = stats.bytes_freed,
        "prune finished"
    );
    Ok(stats)
}
