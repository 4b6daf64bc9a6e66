//! End-to-end tests of the backup core on local repositories, including crafted (malicious) ones.

use std::fs;
use std::path::{Path, PathBuf};

use crate::backup::chunker::{Encoder, Filter};
use crate::backup::crypto::{hex, random_id, Secret};
use crate::backup::index;
use crate::backup::pack::{pack_key, BlobType, PackBuilder};
use crate::backup::restore::restore;
use crate::backup::snapshot::{encode_items, Item, Kind, Snapshot};
use crate::backup::{backup, BackupOptions, Repository};
use crate::error::{BackupErrorKind, CoreError};

struct TempDir(PathBuf);
impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("ferrolab-backup-test-{}", &random_id()[..16]));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn repo_at(dir: &Path) -> Repository {
    Repository::init(
        dir.join("repo").to_str().unwrap(),
        Secret::Password(b"pw"),
        3,
        None,
    )
    .unwrap()
}

/// Stores `items` (with `data` as the content of every file item) as a snapshot, bypassing the archiver.
fn craft(repo: &Repository, items: &mut [Item], data: &[u8]) -> String {
    let mut pb = PackBuilder::default();
    let mut enc = Encoder::new(3);
    let mut payload = Vec::new();
    let did = repo.key.blob_id(data);
    enc.encode(data, 0, Filter::None, &mut payload);
    pb.add(
        BlobType::Data,
        did,
        &repo.key.seal(&payload, &did),
        data.len() as u32,
    );
    for it in items.iter_mut() {
        if it.kind == Kind::File {
            it.chunks = vec![did];
            it.size = data.len() as u64;
        }
    }
    let stream = encode_items(items);
    let tid = repo.key.blob_id(&stream);
    enc.encode(&stream, 0, Filter::None, &mut payload);
    pb.add(
        BlobType::Tree,
        tid,
        &repo.key.seal(&payload, &tid),
        stream.len() as u32,
    );
    let fp = pb.finish(&repo.key);
    repo.store
        .put_parts(&pack_key(&fp.id), &fp.slices())
        .unwrap();
    index::put(&*repo.store, &repo.key, &[(fp.id, fp.blobs)]).unwrap();
    let snap = Snapshot {
        version: 1,
        time: 1.0,
        hostname: "h".into(),
        paths: vec!["/x".into()],
        paths_hex: vec![],
        tags: vec![],
        parent: None,
        tree: vec![hex(&tid)],
        files: 1,
        dirs: 0,
        bytes: 0,
        added_bytes: 0,
        duration: 0.0,
        warnings: vec![],
        id: random_id(),
    };
    repo.store
        .put(&format!("snapshots/{}", snap.id), &snap.encode(&repo.key))
        .unwrap();
    snap.id
}

fn item(path: &[u8], kind: Kind, target: &[u8]) -> Item {
    Item {
        path: path.to_vec(),
        kind,
        mode: match kind {
            Kind::Dir => 0o40755,
            Kind::File => 0o100644,
            Kind::Symlink => 0o120777,
        },
        uid: 0,
        gid: 0,
        mtime_ns: 1_000_000_000,
        ctime_ns: 0,
        inode: 0,
        size: 0,
        target: target.to_vec(),
        chunks: vec![],
    }
}

fn is_refusal(e: &CoreError) -> bool {
    matches!(
        e,
        CoreError::Backup {
            kind: BackupErrorKind::Other,
            ..
        }
    )
}

#[test]
fn crafted_traversal_paths_are_refused_before_writing() {
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let target = t.0.join("target");
    for bad in [
        &b"x/../../escaped"[..],
        b"/abs/escaped",
        b"../escaped",
        b"x/./y",
        b"x//y",
        b"",
    ] {
        let mut items = vec![item(b"x", Kind::Dir, b""), item(bad, Kind::File, b"")];
        let id = craft(&repo, &mut items, b"evil");
        let e = restore(&repo, &id, &target, None, None).unwrap_err();
        assert!(is_refusal(&e), "{e}");
        assert!(e.to_string().contains("refusing"), "{e}");
        assert!(!t.0.join("escaped").exists());
        assert!(!Path::new("/abs/escaped").exists());
        assert!(
            !target.join("x").exists(),
            "nothing is written before the check"
        );
    }
}

#[test]
fn crafted_symlink_then_file_through_it_does_not_escape() {
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let outside = t.0.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let target = t.0.join("target");
    // a symlink to a directory outside the target, then a file "through" it
    let mut items = vec![
        item(b"d", Kind::Dir, b""),
        item(
            b"d/link",
            Kind::Symlink,
            outside.as_os_str().as_encoded_bytes(),
        ),
        item(b"d/link/pwned", Kind::File, b""),
    ];
    let id = craft(&repo, &mut items, b"evil");
    let r = restore(&repo, &id, &target, None, None);
    assert!(
        r.is_err(),
        "the symlink cannot be created over the directory the file needed"
    );
    assert!(!outside.join("pwned").exists(), "wrote through a symlink");
    // a symlink already in the target is never written through either
    let target2 = t.0.join("target2");
    fs::create_dir_all(target2.join("d")).unwrap();
    std::os::unix::fs::symlink(&outside, target2.join("d/link")).unwrap();
    let mut items = vec![item(b"d/link/pwned", Kind::File, b"")];
    let id = craft(&repo, &mut items, b"evil");
    let e = restore(&repo, &id, &target2, None, None).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    assert!(!outside.join("pwned").exists(), "wrote through a symlink");
    // an existing symlink at a file's own path is replaced, not followed
    let victim = outside.join("victim");
    fs::write(&victim, b"keep").unwrap();
    let target3 = t.0.join("target3");
    fs::create_dir_all(&target3).unwrap();
    std::os::unix::fs::symlink(&victim, target3.join("f")).unwrap();
    let mut items = vec![item(b"f", Kind::File, b"")];
    let id = craft(&repo, &mut items, b"new content");
    restore(&repo, &id, &target3, None, None).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
    assert_eq!(fs::read(target3.join("f")).unwrap(), b"new content");
    assert!(!fs::symlink_metadata(target3.join("f"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn backup_restore_round_trip_and_dedup() {
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let src = t.0.join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(src.join("a/big.bin"), &big).unwrap();
    fs::write(src.join("a/b/small.txt"), b"hello").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("a/b/small.txt", src.join("ln")).unwrap();
    let opts = |paths: Vec<PathBuf>| BackupOptions {
        paths,
        tags: vec![],
        exclude: vec!["*.skip".into()],
        host: Some("h".into()),
        time: None,
        progress: None,
    };
    fs::write(src.join("x.skip"), b"excluded").unwrap();
    let s1 = backup(&repo, &opts(vec![src.clone()])).unwrap();
    assert_eq!(s1.files, 3);
    // insert bytes at the start: only about one chunk is stored again
    let mut changed = b"inserted!".to_vec();
    changed.extend_from_slice(&big);
    fs::write(src.join("a/big.bin"), &changed).unwrap();
    let s2 = backup(&repo, &opts(vec![src.clone()])).unwrap();
    assert!(s2.added_bytes < 1_300_000, "added {}", s2.added_bytes);
    assert_eq!(s2.parent.as_deref(), Some(&s1.id[..]));
    let out = t.0.join("out");
    restore(&repo, &s1.id, &out, None, None).unwrap();
    let root = out.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(root.join("a/big.bin")).unwrap(), big);
    assert_eq!(fs::read(root.join("a/b/small.txt")).unwrap(), b"hello");
    assert_eq!(fs::read(root.join("empty")).unwrap(), b"");
    assert_eq!(
        fs::read_link(root.join("ln")).unwrap(),
        Path::new("a/b/small.txt")
    );
    assert!(!root.join("x.skip").exists());
    let rep = crate::backup::verify::verify(&repo, true, None, None).unwrap();
    assert!(rep.ok(), "{:?}", rep.errors);
}
