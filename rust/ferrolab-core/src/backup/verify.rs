//! `verify`: proves every snapshot can be restored, and (with `read_data`) that every stored byte is intact.
//!
//! Checks: every index object, snapshot and tree decodes (each sealed object is bound to its name, so a swapped
//! or replayed object fails here); every pack has the size its index entries add up to; every chunk a snapshot
//! needs is in the index and its pack exists; with `expect_latest`, that snapshot exists and is the newest (a
//! deleted newest snapshot or a rolled-back repository is found); with `read_data`, every pack is read whole,
//! its BLAKE3 name is recomputed, and every blob is authenticated, decompressed and re-hashed. Every damaged
//! item is listed (not only the first), naming the file(s) and chunk a damaged blob belongs to. Nothing is
//! deleted or repaired.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::backup::crypto::hex;
use crate::backup::lock::Lock;
use crate::backup::pack::{pack_key, pack_size, Id};
use crate::backup::repo::{
    decode_blob, pack_id_from_name, poll_progress, ProgressFn, ProgressInfo, Repository,
};
use crate::backup::BResult;

/// One damaged item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// what is damaged: `snapshot <id>`, `index <id>`, `pack <id>`, or a file path with its snapshot
    pub item: String,
    /// `index`, `snapshot`, `tree`, `missing pack`, `missing chunk`, `pack`, `data`
    pub kind: &'static str,
    pub message: String,
}

/// What verify found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub errors: Vec<VerifyError>,
    pub snapshots: u64,
    pub packs: u64,
    pub blobs: u64,
    pub bytes_read: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks the repository.
pub fn verify(
    repo: &Repository,
    read_data: bool,
    expect_latest: Option<&str>,
    progress: Option<ProgressFn<'_>>,
) -> BResult<VerifyReport> {
    if let Some(id) = expect_latest {
        if crate::backup::crypto::unhex::<32>(id).is_none() {
            return Err(crate::error::CoreError::value(
                "verify",
                "expect_latest",
                format!("'{id}' is not a full snapshot id (64 hex digits)"),
            ));
        }
    }
    let _lock = Lock::acquire(repo.store.clone(), repo.key.clone(), false)?;
    let mut rep = VerifyReport::default();
    // the index, with packs no index lists recovered from their headers; damaged index objects are errors
    let (idx, bad_idx, _) = repo.load_index()?;
    for (name, e) in bad_idx {
        rep.errors.push(VerifyError {
            item: format!("index {name}"),
            kind: "index",
            message: e.to_string(),
        });
    }
    let listed: HashMap<Id, u64> = repo
        .store
        .list("data")?
        .into_iter()
        .filter_map(|e| pack_id_from_name(&e.name).map(|id| (id, e.size)))
        .collect();
    for (id, size) in &listed {
        if !idx.has_pack(id) {
            let msg = repo
                .read_pack_header(id, *size)
                .err()
                .map_or_else(|| "not listed by any index".to_string(), |e| e.to_string());
            rep.errors.push(VerifyError {
                item: format!("pack {}", hex(id)),
                kind: "pack",
                message: msg,
            });
        }
    }
    let mut missing_packs = std::collections::HashSet::new();
    for (slot, p) in idx.packs.iter().enumerate() {
        match listed.get(p) {
            None => {
                missing_packs.insert(*p);
                rep.errors.push(VerifyError {
                    item: format!("pack {}", hex(p)),
                    kind: "missing pack",
                    message: "listed in the index but not in the repository".into(),
                });
            }
            Some(&size) => {
                let want = pack_size(&idx.pack_blobs[slot]);
                if size != want {
                    rep.errors.push(VerifyError {
                        item: format!("pack {}", hex(p)),
                        kind: "pack",
                        message: format!(
                            "pack size is {size} bytes, but its index entries add up to {want} bytes \
                             (truncated or extended)"
                        ),
                    });
                }
            }
        }
    }

    // snapshots and their trees; who owns each chunk (for naming damaged data)
    let (snaps, bad_snaps) = repo.load_snapshots()?;
    for (name, e) in bad_snaps {
        rep.errors.push(VerifyError {
            item: format!("snapshot {name}"),
            kind: "snapshot",
            message: e.to_string(),
        });
    }
    rep.snapshots = snaps.len() as u64;
    if let Some(id) = expect_latest {
        let newest = snaps.last();
        let problem = match newest {
            Some(s) if s.id == id => None,
            _ if !snaps.iter().any(|s| s.id == id) => Some(
                "expected as the latest snapshot, but it is not in the repository (deleted, or the \
                 repository was rolled back)"
                    .to_string(),
            ),
            Some(s) => Some(format!(
                "expected as the latest snapshot, but snapshot {} is newer",
                s.id
            )),
            None => None,
        };
        if let Some(message) = problem {
            rep.errors.push(VerifyError {
                item: format!("snapshot {id}"),
                kind: "snapshot",
                message,
            });
        }
    }
    let mut owners: HashMap<Id, Vec<String>> = HashMap::new();
    for s in &snaps {
        let short = &s.id[..8];
        for t in s.tree_ids().unwrap_or_default() {
            owners
                .entry(t)
                .or_default()
                .push(format!("snapshot {short} (metadata)"));
        }
        let items = match repo.load_items(s, &idx) {
            Ok(items) => items,
            Err(e) => {
                rep.errors.push(VerifyError {
                    item: format!("snapshot {}", s.id),
                    kind: "tree",
                    message: e.to_string(),
                });
                continue;
            }
        };
        if let Err(e) = crate::backup::restore::check_restorable(&items, &idx, &s.id) {
            rep.errors.push(VerifyError {
                item: format!("snapshot {}", s.id),
                kind: "tree",
                message: e.to_string(),
            });
        }
        for it in &items {
            for (n, c) in it.chunks.iter().enumerate() {
                let o = owners.entry(*c).or_default();
                if o.len() < 3 {
                    o.push(format!("{} (snapshot {short})", it.display()));
                }
                match idx.get(c) {
                    None => rep.errors.push(VerifyError {
                        item: format!("{} (snapshot {short})", it.display()),
                        kind: "missing chunk",
                        message: format!("chunk {n} ({}) is not in the repository", hex(c)),
                    }),
                    Some((p, _)) if missing_packs.contains(&p) => rep.errors.push(VerifyError {
                        item: format!("{} (snapshot {short})", it.display()),
                        kind: "missing chunk",
                        message: format!("chunk {n} ({}) is in missing pack {}", hex(c), hex(&p)),
                    }),
                    _ => {}
                }
            }
        }
    }
    rep.packs = idx.packs.len() as u64;
    rep.blobs = idx.blobs.len() as u64;
    if !read_data {
        return Ok(rep);
    }

    // read every pack
    let packs: Vec<(usize, Id)> = idx
        .packs
        .iter()
        .enumerate()
        .filter(|(_, p)| listed.contains_key(*p))
        .map(|(i, p)| (i, *p))
        .collect();
    let total: u64 = packs.iter().map(|(_, p)| listed[p]).sum();
    let next = AtomicUsize::new(0);
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let read = AtomicU64::new(0);
    let errors = Mutex::new(Vec::new());
    let nthreads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let name_of = |id: &Id| -> String {
        owners
            .get(id)
            .map_or_else(|| format!("blob {} (unused)", hex(id)), |o| o.join(", "))
    };
    std::thread::scope(|s| {
        for _ in 0..nthreads {
            s.spawn(|| {
                let mut dctx = zstd::bulk::Decompressor::new().expect("zstd");
                loop {
                    if cancel.load(Ordering::Relaxed) {
                        return;
                    }
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(slot, pid)) = packs.get(k) else {
                        return;
                    };
                    let mut errs = Vec::new();
                    match repo.store.get(&pack_key(&pid)) {
                        Err(e) => errs.push(VerifyError {
                            item: format!("pack {}", hex(&pid)),
                            kind: "pack",
                            message: e.to_string(),
                        }),
                        Ok(data) => {
                            read.fetch_add(data.len() as u64, Ordering::Relaxed);
                            if *blake3::hash(&data).as_bytes() != pid {
                                errs.push(VerifyError {
                                    item: format!("pack {}", hex(&pid)),
                                    kind: "pack",
                                    message: "content does not match its name (BLAKE3)".into(),
                                });
                            }
                            if let Err(e) = crate::backup::pack::parse_pack(&repo.key, &data, &pid)
                            {
                                errs.push(VerifyError {
                                    item: format!("pack {}", hex(&pid)),
                                    kind: "pack",
                                    message: format!("header: {e}"),
                                });
                            }
                            for b in &idx.pack_blobs[slot] {
                                let (o, l) = (b.offset as usize, b.length as usize);
                                let r = data
                                    .get(o..o + l)
                                    .ok_or_else(|| "extends past the end of the pack".to_string())
                                    .and_then(|sealed| {
                                        decode_blob(
                                            &repo.key,
                                            &b.id,
                                            sealed,
                                            b.raw_len as usize,
                                            &mut dctx,
                                        )
                                    });
                                if let Err(m) = r {
                                    errs.push(VerifyError {
                                        item: name_of(&b.id),
                                        kind: "data",
                                        message: format!(
                                            "{} chunk {} in pack {}: {m}",
                                            b.ty.name(),
                                            hex(&b.id),
                                            hex(&pid)
                                        ),
                                    });
                                }
                            }
                        }
                    }
                    if !errs.is_empty() {
                        errors.lock().unwrap().extend(errs);
                    }
                }
            });
        }
        if let Some(p) = progress {
            let go_on = poll_progress(
                p,
                || next.load(Ordering::Relaxed) < packs.len(),
                || ProgressInfo {
                    phase: "verify",
                    done_bytes: read.load(Ordering::Relaxed),
                    total_bytes: total,
                    done_files: next.load(Ordering::Relaxed).min(packs.len()) as u64,
                    total_files: packs.len() as u64,
                },
            );
            if !go_on {
                cancel.store(true, Ordering::SeqCst);
            }
        }
    });
    if cancel.load(Ordering::SeqCst) {
        return Err(crate::backup::repo::cancelled("verify"));
    }
    if let Some(p) = progress {
        let _ = p(&ProgressInfo {
            phase: "verify",
            done_bytes: read.load(Ordering::Relaxed),
            total_bytes: total,
            done_files: packs.len() as u64,
            total_files: packs.len() as u64,
        });
    }
    rep.bytes_read = read.load(Ordering::Relaxed);
    let mut errs = errors.into_inner().unwrap();
    errs.sort_by(|a, b| a.item.cmp(&b.item).then(a.message.cmp(&b.message)));
    rep.errors.extend(errs);
    Ok(rep)
}
