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

/// Backup options for `src` alone, on host "h".
fn options(src: &Path) -> BackupOptions<'static> {
    BackupOptions {
        paths: vec![src.to_path_buf()],
        tags: vec![],
        exclude: vec![],
        host: Some("h".into()),
        time: None,
        progress: None,
    }
}

/// Stores `items` (with `data` as the content of every file item, and its length as the size of those whose
/// size is 0) as a snapshot, bypassing the archiver.
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
            if it.size == 0 {
                it.size = data.len() as u64;
            }
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
fn a_symlink_over_an_existing_directory_is_refused_before_any_file_is_written() {
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let target = t.0.join("target");
    fs::create_dir_all(target.join("l")).unwrap();
    let mut items = vec![item(b"a", Kind::File, b""), item(b"l", Kind::Symlink, b"a")];
    let id = craft(&repo, &mut items, b"x");
    let e = restore(&repo, &id, &target, None, None).unwrap_err();
    assert!(e.to_string().contains("exists and is a directory"), "{e}");
    assert!(
        !target.join("a").exists(),
        "a file was written before the refusal"
    );
    assert!(target.join("l").is_dir(), "the directory is left as it was");
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

fn is_corruption(e: &CoreError) -> bool {
    matches!(
        e,
        CoreError::Backup {
            kind: BackupErrorKind::Corruption,
            ..
        }
    )
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p).unwrap().mode()
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn repo_path(dir: &Path) -> PathBuf {
    dir.join("repo")
}

#[test]
fn crafted_duplicate_paths_are_refused_in_every_order() {
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let outside = t.0.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    fs::write(&victim, b"keep").unwrap();
    chmod(&victim, 0o644);
    let link = victim.as_os_str().as_encoded_bytes().to_vec();
    let kinds = [Kind::File, Kind::Symlink, Kind::Dir];
    for (n, (a, b)) in kinds
        .iter()
        .flat_map(|a| kinds.iter().map(move |b| (*a, *b)))
        .enumerate()
    {
        let target = t.0.join(format!("target{n}"));
        let mut items = vec![
            item(b"b", Kind::Dir, b""),
            item(b"b/f", a, &link),
            item(b"b/f", b, &link),
        ];
        for it in items.iter_mut().skip(1) {
            if it.kind == Kind::File {
                it.mode = 0o104755; // setuid: must never land on the victim
            }
        }
        let id = craft(&repo, &mut items, b"evil");
        if a == b {
            // listed twice alike (as snapshots of overlapping paths were): restored once
            restore(&repo, &id, &target, None, None).unwrap();
            assert!(fs::symlink_metadata(target.join("b/f")).is_ok());
            assert_eq!(fs::read(&victim).unwrap(), b"keep");
            assert_eq!(mode_of(&victim) & 0o7777, 0o644, "{a:?} twice");
            continue;
        }
        let e = restore(&repo, &id, &target, None, None).unwrap_err();
        assert!(is_corruption(&e), "{a:?} then {b:?}: {e}");
        assert!(e.to_string().contains("more than once"), "{e}");
        assert!(
            !target.join("b").exists(),
            "nothing is written before the check"
        );
        // verify reports what restore refuses
        let rep = crate::backup::verify::verify(&repo, false, None, None).unwrap();
        assert!(
            rep.errors
                .iter()
                .any(|er| er.item.contains(&id) && er.message.contains("more than once")),
            "{a:?} then {b:?}: {:?}",
            rep.errors.iter().map(|e| &e.message).collect::<Vec<_>>()
        );
        repo.store.delete(&format!("snapshots/{id}")).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(mode_of(&victim) & 0o7777, 0o644, "{a:?} then {b:?}");
    }
}

#[test]
fn crafted_links_and_files_never_touch_what_a_link_points_to() {
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let outside = t.0.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    fs::write(&victim, b"keep").unwrap();
    chmod(&victim, 0o644);
    chmod(&outside, 0o755);
    let to_victim = victim.as_os_str().as_encoded_bytes().to_vec();
    let to_outside = outside.as_os_str().as_encoded_bytes().to_vec();
    // a link to a file beside a setuid file, a link to a directory with a file or a directory "inside" it, in
    // both orders
    let cases: Vec<Vec<Item>> = vec![
        vec![
            item(b"l", Kind::Symlink, &to_victim),
            item(b"m", Kind::File, b""),
        ],
        vec![
            item(b"m", Kind::File, b""),
            item(b"l", Kind::Symlink, &to_victim),
        ],
        vec![
            item(b"l", Kind::Symlink, &to_outside),
            item(b"l/f", Kind::File, b""),
        ],
        vec![
            item(b"l/f", Kind::File, b""),
            item(b"l", Kind::Symlink, &to_outside),
        ],
        vec![
            item(b"l", Kind::Symlink, &to_outside),
            item(b"l/d", Kind::Dir, b""),
        ],
        vec![
            item(b"l/d", Kind::Dir, b""),
            item(b"l", Kind::Symlink, &to_outside),
        ],
    ];
    for (n, mut items) in cases.into_iter().enumerate() {
        for it in items.iter_mut() {
            it.mode = match it.kind {
                Kind::File => 0o106777,
                Kind::Dir => 0o42777,
                Kind::Symlink => 0o120777,
            };
        }
        let target = t.0.join(format!("target{n}"));
        let id = craft(&repo, &mut items, b"evil");
        let _ = restore(&repo, &id, &target, None, None);
        assert_eq!(fs::read(&victim).unwrap(), b"keep", "case {n}");
        assert_eq!(mode_of(&victim) & 0o7777, 0o644, "case {n}");
        assert_eq!(mode_of(&outside) & 0o7777, 0o755, "case {n}");
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            1,
            "case {n}: something was created outside"
        );
    }
}

#[test]
fn restore_keeps_setuid_bits_and_names_files_only_when_complete() {
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let mut items = vec![item(b"d", Kind::Dir, b""), item(b"d/s", Kind::File, b"")];
    items[1].mode = 0o104750;
    let id = craft(&repo, &mut items, b"setuid program");
    let target = t.0.join("target");
    restore(&repo, &id, &target, None, None).unwrap();
    assert_eq!(mode_of(&target.join("d/s")) & 0o7777, 0o4750);
    assert_eq!(fs::read(target.join("d/s")).unwrap(), b"setuid program");
    let names: Vec<_> = fs::read_dir(target.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("s")],
        "no temp files left"
    );

    // a file whose size does not match its chunks: refused before anything is written
    let mut items = vec![item(b"f", Kind::File, b"")];
    items[0].size = 99;
    let id = craft(&repo, &mut items, b"data");
    let target2 = t.0.join("target2");
    let e = restore(&repo, &id, &target2, None, None).unwrap_err();
    assert!(is_corruption(&e) && e.to_string().contains("size"), "{e}");
    assert!(!target2.join("f").exists());

    // a file whose chunk is damaged: no file that looks complete is left behind
    let mut lost = vec![item(b"g", Kind::File, b"")];
    let id3 = craft(&repo, &mut lost, b"data that will be damaged");
    let snap3 = repo.load_snapshot(&id3).unwrap();
    let (idx3, _, _) = repo.load_index().unwrap();
    let chunk = repo.load_items(&snap3, &idx3).unwrap()[0].chunks[0];
    let (pack, loc) = idx3.get(&chunk).unwrap();
    let pack_file = repo_path(&t.0).join(pack_key(&pack));
    let mut damaged = fs::read(&pack_file).unwrap();
    damaged[loc.offset as usize + 30] ^= 1; // inside the data blob's ciphertext; the tree blob stays intact
    fs::write(&pack_file, &damaged).unwrap();
    let target3 = t.0.join("target3");
    let e = restore(&repo, &id3, &target3, None, None).unwrap_err();
    assert!(is_corruption(&e), "{e}");
    let left: Vec<_> = fs::read_dir(&target3)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "a damaged file got its name, or temp files were left: {left:?}"
    );
}

#[test]
fn objects_are_bound_to_their_names() {
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let mut a = vec![item(b"a", Kind::File, b"")];
    let mut b = vec![item(b"b", Kind::File, b"")];
    let ida = craft(&repo, &mut a, b"first");
    let idb = craft(&repo, &mut b, b"second");
    let snaps = repo_path(&t.0).join("snapshots");
    let (pa, pb) = (snaps.join(&ida), snaps.join(&idb));
    let (da, db) = (fs::read(&pa).unwrap(), fs::read(&pb).unwrap());
    fs::write(&pa, &db).unwrap();
    fs::write(&pb, &da).unwrap();
    for id in [&ida, &idb] {
        let e = repo.load_snapshot(id).unwrap_err();
        assert!(is_corruption(&e), "{e}");
        assert!(e.to_string().contains(id.as_str()), "{e}");
    }
    let rep = crate::backup::verify::verify(&repo, false, None, None).unwrap();
    let named: Vec<&str> = rep.errors.iter().map(|e| e.item.as_str()).collect();
    assert!(
        named.contains(&format!("snapshot {ida}").as_str()),
        "{named:?}"
    );
    assert!(
        named.contains(&format!("snapshot {idb}").as_str()),
        "{named:?}"
    );
}

#[test]
fn format_1_repositories_still_open_and_work() {
    let t = TempDir::new();
    let url = repo_path(&t.0);
    let repo = Repository::init_version(url.to_str().unwrap(), Secret::Password(b"pw"), 3, None, 1)
        .unwrap();
    assert_eq!(repo.key.format, 1);
    let src = t.0.join("src");
    fs::create_dir_all(&src).unwrap();
    let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(src.join("f"), &data).unwrap();
    let opts = options(&src);
    let s1 = backup(&repo, &opts).unwrap();
    drop(repo);
    let repo = Repository::open(url.to_str().unwrap(), Secret::Password(b"pw"), None).unwrap();
    assert_eq!((repo.config.version, repo.key.format), (1, 1));
    fs::write(src.join("g"), &data).unwrap();
    let s2 = backup(&repo, &opts).unwrap();
    assert!(
        s2.added_bytes < 10_000,
        "the format 1 chunker still deduplicates: added {}",
        s2.added_bytes
    );
    let out = t.0.join("out");
    restore(&repo, &s1.id, &out, None, None).unwrap();
    assert_eq!(
        fs::read(out.join(src.strip_prefix("/").unwrap()).join("f")).unwrap(),
        data
    );
    assert!(crate::backup::verify::verify(&repo, true, None, None)
        .unwrap()
        .ok());
    // a new repository is format 2
    let repo2 = repo_at(&t.0.join("new"));
    assert_eq!((repo2.config.version, repo2.key.format), (2, 2));
}

#[test]
fn the_gear_table_comes_from_the_key() {
    use crate::backup::crypto::MasterKey;
    let (k1, k2) = (MasterKey::generate(), MasterKey::generate());
    let (g1, ls1) = k1.gear();
    let (g2, _) = k2.gear();
    assert_eq!(g1.len(), 256);
    assert_ne!(g1, g2);
    assert!(ls1.iter().zip(&g1).all(|(l, g)| *l == g << 1));
    // no structure shared with the public table: the XOR with it is not one constant (format 1's seed)
    let (public, _) = fastcdc::v2020::get_gear_with_seed(0);
    let xors: std::collections::HashSet<u64> =
        g1.iter().zip(public.iter()).map(|(a, b)| a ^ b).collect();
    assert!(xors.len() > 250);
    // the same key gives the same table (chunk boundaries are stable across runs)
    assert_eq!(k1.gear().0, g1);
}

/// A store that counts ranged reads (and passes everything to a local store).
struct CountingStore {
    inner: std::sync::Arc<dyn crate::backup::store::Store>,
    ranges: std::sync::atomic::AtomicUsize,
}

impl crate::backup::store::Store for CountingStore {
    fn url(&self) -> &str {
        self.inner.url()
    }
    fn create(&self) -> crate::backup::BResult<()> {
        self.inner.create()
    }
    fn put(&self, key: &str, data: &[u8]) -> crate::backup::BResult<()> {
        self.inner.put(key, data)
    }
    fn get(&self, key: &str) -> crate::backup::BResult<Vec<u8>> {
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> crate::backup::BResult<Vec<u8>> {
        self.ranges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get_range(key, offset, len)
    }
    fn list(&self, dir: &str) -> crate::backup::BResult<Vec<crate::backup::store::Entry>> {
        self.inner.list(dir)
    }
    fn delete(&self, key: &str) -> crate::backup::BResult<()> {
        self.inner.delete(key)
    }
    fn exists(&self, key: &str) -> crate::backup::BResult<bool> {
        self.inner.exists(key)
    }
}

/// 300 files `content(i)` in 30 folders under `root` (a snapshot's metadata of several tree blobs); their paths.
fn small_files(root: &Path, content: impl Fn(usize) -> Vec<u8>) -> Vec<PathBuf> {
    (0..300)
        .map(|i| {
            let f = root.join(format!("d{:02}/f{i:03}", i % 30));
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, content(i)).unwrap();
            f
        })
        .collect()
}

#[test]
fn packs_hold_a_files_chunks_in_order_and_restore_reads_them_in_few_ranges() {
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let src = t.0.join("src");
    // 12 MB that does not compress (about 90 chunks), and 300 small files
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let big: Vec<u8> = (0..12_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let small = small_files(&src.join("small"), |i| {
        big[i * 1000..i * 1000 + 500 + i].to_vec()
    });
    fs::write(src.join("big.bin"), &big).unwrap();
    let opts = options(&src);
    let snap = backup(&repo, &opts).unwrap();
    let (idx, _, _) = repo.load_index().unwrap();
    let items = repo.load_items(&snap, &idx).unwrap();
    let big_item = items.iter().find(|i| i.path.ends_with(b"big.bin")).unwrap();
    assert!(
        big_item.chunks.len() > 40,
        "{} chunks",
        big_item.chunks.len()
    );
    // consecutive chunks in one pack lie back to back, in file order
    let locs: Vec<_> = big_item
        .chunks
        .iter()
        .map(|c| idx.get(c).unwrap())
        .collect();
    for w in locs.windows(2) {
        let ((p0, l0), (p1, l1)) = (w[0], w[1]);
        if p0 == p1 {
            assert_eq!(
                l1.offset,
                l0.offset + l0.length,
                "chunks out of file order in a pack"
            );
        }
    }
    let packs: std::collections::HashSet<_> = locs.iter().map(|(p, _)| *p).collect();

    // a restore through a counting store: a few ranged reads per pack, not one per chunk
    let counting = std::sync::Arc::new(CountingStore {
        inner: repo.store.clone(),
        ranges: std::sync::atomic::AtomicUsize::new(0),
    });
    let counted = Repository {
        store: counting.clone(),
        key: repo.key.clone(),
        config: repo.config.clone(),
    };
    let out = t.0.join("out");
    restore(&counted, &snap.id, &out, None, None).unwrap();
    let root = out.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(root.join("big.bin")).unwrap(), big);
    for i in [0usize, 150, 299] {
        let rel = small[i].strip_prefix(&src).unwrap();
        assert_eq!(
            fs::read(root.join(rel)).unwrap(),
            &big[i * 1000..i * 1000 + 500 + i]
        );
    }
    let reads = counting.ranges.load(std::sync::atomic::Ordering::Relaxed);
    // the data: one ranged read per pack and per restore unit (a restore this small is cut into units of 4 MiB,
    // so that every data thread gets some; the small files lie in the packs of the big one, or after them); the
    // metadata: its tree blobs lie side by side, one read per pack that holds them
    let tree_packs: std::collections::HashSet<_> = snap
        .tree_ids()
        .unwrap()
        .iter()
        .map(|t| idx.get(t).unwrap().0)
        .collect();
    let data_packs: std::collections::HashSet<_> = items
        .iter()
        .flat_map(|i| i.chunks.iter().map(|c| idx.get(c).unwrap().0))
        .collect();
    assert!(snap.tree_ids().unwrap().len() >= 4, "{:?}", snap.tree);
    let data_bytes: u64 = items.iter().map(|i| i.size).sum();
    let units = data_bytes.div_ceil(4 << 20) as usize;
    assert!(
        reads <= data_packs.len() + units + tree_packs.len(),
        "{reads} ranged reads: {} packs of data ({} of the big file), {units} units, {} packs of metadata",
        data_packs.len(),
        packs.len(),
        tree_packs.len()
    );
    counting
        .ranges
        .store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(counted.load_items(&snap, &idx).unwrap(), items);
    assert_eq!(
        counting.ranges.load(std::sync::atomic::Ordering::Relaxed),
        tree_packs.len()
    );
}

#[test]
fn a_truncated_pack_is_reported_with_the_first_blob_past_its_end() {
    // the snapshot's tree blobs come in one ranged read; the pack that holds them is cut inside the last one
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let src = t.0.join("src");
    small_files(&src, |i| i.to_string().into_bytes());
    let snap = backup(&repo, &options(&src)).unwrap();
    let (idx, _, _) = repo.load_index().unwrap();
    let trees = snap.tree_ids().unwrap();
    assert!(trees.len() >= 3, "{} tree blobs", trees.len());
    let (pack, first) = idx.get(&trees[0]).unwrap();
    let (last_pack, last) = idx.get(trees.last().unwrap()).unwrap();
    assert_eq!(pack, last_pack, "the tree blobs share a pack");
    let file = t.0.join("repo").join(pack_key(&pack));
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(last.offset as u64 + 10)
        .unwrap();
    let err = repo.load_items(&snap, &idx).unwrap_err().to_string();
    assert!(err.contains(&hex(trees.last().unwrap())), "{err}");
    assert!(!err.contains(&hex(&trees[0])), "{err}");
    assert!(err.contains("missing or truncated"), "{err}");
    assert!(first.offset < last.offset);
}

#[test]
fn overlapping_roots_are_walked_once_and_the_snapshot_restores() {
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let src = t.0.join("data");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("top.txt"), b"top").unwrap();
    fs::write(src.join("sub/inner.txt"), b"inner").unwrap();
    fs::write(src.join("sub/deeper/x.txt"), b"x").unwrap();
    let mut opts = options(&src);
    opts.paths = vec![
        src.join("sub"),
        src.clone(),
        src.join("sub/deeper"),
        src.clone(),
    ];
    let snap = backup(&repo, &opts).unwrap();
    assert_eq!(snap.files, 3);
    assert_eq!(snap.paths, vec![src.to_str().unwrap().to_string()]);
    let target = t.0.join("out");
    restore(&repo, &snap.id, &target, None, None).unwrap();
    let rel = src.strip_prefix("/").unwrap();
    assert_eq!(
        fs::read(target.join(rel).join("sub/inner.txt")).unwrap(),
        b"inner"
    );
    let rep = crate::backup::verify::verify(&repo, true, None, None).unwrap();
    assert!(
        rep.errors.is_empty(),
        "{:?}",
        rep.errors.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
}

#[test]
fn the_root_directory_of_a_backup_of_slash_is_the_target() {
    // a backup of `/` stores the root directory as the item with the empty path
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let mut items = vec![
        item(b"", Kind::Dir, b""),
        item(b"etc", Kind::Dir, b""),
        item(b"etc/hosts", Kind::File, b""),
    ];
    let id = craft(&repo, &mut items, b"127.0.0.1 localhost\n");
    let target = t.0.join("out");
    let stats = restore(&repo, &id, &target, None, None).unwrap();
    assert_eq!((stats.files, stats.dirs), (1, 1));
    assert_eq!(
        fs::read(target.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    // include "/" (the empty item path) is everything
    let again = t.0.join("again");
    let stats = restore(&repo, &id, &again, Some(&[Vec::new()]), None).unwrap();
    assert_eq!((stats.files, stats.dirs), (1, 1));
    let rep = crate::backup::verify::verify(&repo, true, None, None).unwrap();
    assert!(
        rep.errors.is_empty(),
        "{:?}",
        rep.errors.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
    // an empty path that is not a directory is still refused
    let mut bad = vec![item(b"", Kind::File, b"")];
    let id = craft(&repo, &mut bad, b"x");
    let e = restore(&repo, &id, &t.0.join("bad"), None, None).unwrap_err();
    assert!(
        is_refusal(&e) && e.to_string().contains("empty path"),
        "{e}"
    );
}

#[test]
fn special_files_are_skipped_with_a_warning() {
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let src = t.0.join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("plain.txt"), b"plain").unwrap();
    let fifo = src.join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let snap = backup(&repo, &options(&src)).unwrap();
    assert_eq!(snap.files, 1);
    assert!(
        snap.warnings
            .iter()
            .any(|w| w.contains("pipe") && w.contains("a FIFO")),
        "{:?}",
        snap.warnings
    );
    let target = t.0.join("out");
    restore(&repo, &snap.id, &target, None, None).unwrap();
    let rel = src.strip_prefix("/").unwrap();
    assert!(target.join(rel).join("plain.txt").exists());
    assert!(fs::symlink_metadata(target.join(rel).join("pipe")).is_err());
}

#[test]
fn a_held_lock_is_refreshed_until_it_is_released() {
    use crate::backup::lock::{Lock, LockInfo};
    let t = TempDir::new();
    let repo = repo_at(&t.0);
    let read = |repo: &Repository| -> Vec<LockInfo> {
        repo.store
            .list("locks")
            .unwrap()
            .iter()
            .map(|e| {
                let data = repo.store.get(&format!("locks/{}", e.name)).unwrap();
                let plain = repo.key.open_object("lock", &e.name, &data).unwrap();
                serde_json::from_slice(&plain).unwrap()
            })
            .collect()
    };
    let lock = Lock::acquire_refreshing(
        repo.store.clone(),
        repo.key.clone(),
        true,
        std::time::Duration::from_millis(20),
    )
    .unwrap();
    let first = read(&repo);
    assert_eq!(first.len(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if let [now] = read(&repo).as_slice() {
            if now.time > first[0].time {
                assert!(now.exclusive);
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was never refreshed"
        );
    }
    lock.check().unwrap();
    lock.confirm().unwrap();
    drop(lock);
    assert!(
        read(&repo).is_empty(),
        "released: no refresh writes it again"
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(read(&repo).is_empty());

    // a lock another process removed (took for stale) is lost: confirm() says so at once, check() once the keeper
    // has noticed, and the keeper does not write it again
    let lock = Lock::acquire_refreshing(
        repo.store.clone(),
        repo.key.clone(),
        true,
        std::time::Duration::from_millis(20),
    )
    .unwrap();
    for e in repo.store.list("locks").unwrap() {
        repo.store.delete(&format!("locks/{}", e.name)).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while lock.check().is_ok() {
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            std::time::Instant::now() < deadline,
            "the keeper never noticed"
        );
    }
    let e = lock.confirm().unwrap_err();
    assert!(e.to_string().contains("removed"), "{e}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        read(&repo).is_empty(),
        "a removed lock is not written again"
    );
}

#[test]
fn opening_a_file_or_a_path_below_one_is_repository_not_found() {
    let t = TempDir::new();
    let file = t.0.join("plainfile");
    fs::write(&file, b"x").unwrap();
    for url in [file.clone(), file.join("sub"), file.join("sub/deeper")] {
        let e = Repository::open(url.to_str().unwrap(), Secret::Password(b"pw"), None)
            .err()
            .expect("no repository there");
        assert!(
            matches!(
                e,
                CoreError::Backup {
                    kind: BackupErrorKind::RepositoryNotFound,
                    ..
                }
            ),
            "{url:?}: {e:?}"
        );
        assert!(e.to_string().contains("is a file, not a directory"), "{e}");
    }
}
