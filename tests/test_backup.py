"""fl.backup against real repositories: round trips of random trees, incremental backups, passwords, damage found by
verify, concurrent backups, locks, forget + prune, metrics, progress and bad input.

Restore puts every item at ``target/<its absolute original path without the leading slash>``; the trees are compared
with :func:`backup_helpers.manifest` (kinds, permission bits, mtimes in ns, contents, symlink targets, names as bytes).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

import ferrolab as fl
import numpy as np
import pytest
from backup_helpers import (
    PASSWORD,
    content_manifest,
    diff,
    file_digest,
    flip_byte,
    kill,
    manifest,
    objects,
    repo_bytes,
    restored_root,
    spawn,
    wait_for,
)
from ferrolab import cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Repository = fl.backup.Repository
MiB = 1 << 20


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch):
    for var in ("FERROLAB_PASSWORD", "FERROLAB_PASSWORD_FILE", "FERROLAB_REPOSITORY"):
        monkeypatch.delenv(var, raising=False)


def new_repo(path: Any, **kwargs: Any) -> Repository:
    if "key_file" not in kwargs:
        kwargs.setdefault("password", PASSWORD)
    return Repository.init(path, **kwargs)


def write(path: Any, data: bytes, mtime_ns: int | None = None) -> None:
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def force_rmtree(path: Any) -> None:
    """rmtree that also removes read-only directories (as a user other than root)."""
    for dirpath, dirnames, _files in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
    shutil.rmtree(path)


def restore_tree(repo: Repository, snap: fl.backup.Snapshot | str, target: Any, root: str | None = None,
                 **kwargs: Any) -> tuple[dict[str, int], str]:
    """Restores ``snap`` and returns its counts and where its root (``snap.paths[0]`` by default) landed."""
    counts = repo.restore(snap, target=target, **kwargs)
    if root is None:
        assert isinstance(snap, fl.backup.Snapshot)
        root = snap.paths[0]
    return counts, restored_root(target, root)


def repo_files(repo_path: Any) -> dict[str, int]:
    """Every file of a repository directory with its size (to prove that nothing was written)."""
    out = {}
    for dirpath, _dirs, files in os.walk(repo_path):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, repo_path)] = os.path.getsize(p)
    return out


# --- round trips of random trees --------------------------------------------------------------------------------
_ALPHABET = st.characters(exclude_characters="/\x00", exclude_categories=("Cs",))
NAMES = st.one_of(
    st.text(_ALPHABET, min_size=1, max_size=10).map(os.fsencode),
    # arbitrary bytes: mostly not UTF-8
    st.binary(min_size=1, max_size=10).map(lambda b: b.replace(b"/", b"_").replace(b"\x00", b"-")),
).filter(lambda n: n not in (b".", b".."))
FILE_MODES = st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o444, 0o640, 0o750, 0o711, 0o664, 0o555])
DIR_MODES = st.sampled_from([0o755, 0o700, 0o750, 0o775, 0o555, 0o1777, 0o711])
# whole seconds, times before 1970, and nanoseconds
MTIMES = st.builds(lambda s, ns: s * 1_000_000_000 + ns, st.integers(-(2**31), 2**33),
                   st.one_of(st.just(0), st.integers(0, 999_999_999)))
CONTENT_KINDS = ["empty", "random", "random", "text", "floats", "npy", "odd_npy", "large"]
CONTENTS = st.tuples(st.sampled_from(CONTENT_KINDS), st.integers(0, 70_000), st.integers(0, 2**32))


def content(kind: str, size: int, seed: int) -> bytes:
    """File data of a kind: random bytes, repetitive text, float data (raw and .npy, also with a header length
    that is not a multiple of the element size), or a file of more than 1 MiB."""
    rnd = random.Random(seed)
    gen = np.random.default_rng(seed)
    if kind == "empty":
        return b""
    if kind == "random":
        return rnd.randbytes(size)
    if kind == "text":
        words = [b"alpha ", b"beta\n", b"gamma,", b"0.125;", b"\xff\xfe", b"delta\t"]
        pattern = b"".join(rnd.choice(words) for _ in range(64))
        return (pattern * (size // len(pattern) + 1))[:size]
    if kind == "floats":  # a random walk: shuffled bytes compress well
        return np.cumsum(gen.standard_normal(size // 8 + 1)).tobytes()
    if kind == "npy":
        dtype = rnd.choice(["<f8", "<f4", "<f2", "<i2", ">f8"])
        buf = io.BytesIO()
        walk = np.clip(np.cumsum(gen.standard_normal(size // 4 + 600)) * 100, -30_000, 30_000)
        np.save(buf, walk.astype(dtype))
        return buf.getvalue()
    if kind == "odd_npy":
        n = size // 8 + 600
        header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({n},), }}".encode()
        header += b" " * (rnd.randrange(1, 8) * 2 + len(header) % 2) + b"\n"  # odd length: data at an odd offset
        return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + np.cumsum(
            gen.standard_normal(n)).tobytes()
    assert kind == "large"
    n = 1_100_000 + size * 20
    return rnd.randbytes(n // 2) + bytes(range(256)) * (n // 512) + rnd.randbytes(n % 512)


class Entry(NamedTuple):
    kind: str  # "dir", "file", "symlink"
    rel: bytes
    payload: Any  # file: (kind, size, seed); symlink: target bytes
    mode: int | None
    mtime_ns: int


class Tree(NamedTuple):
    entries: list[Entry]
    root_mode: int
    root_mtime_ns: int


@st.composite
def trees(draw: Any) -> Tree:
    used: set[bytes] = {b""}
    dirs = [b""]
    entries: list[Entry] = []

    def fresh(parent: bytes) -> bytes:
        rel = os.path.join(parent, draw(NAMES)) if parent else draw(NAMES)
        while rel in used:
            rel += b"~"
        used.add(rel)
        return rel

    for _ in range(draw(st.integers(0, 4))):
        rel = fresh(draw(st.sampled_from(dirs)))
        dirs.append(rel)
        entries.append(Entry("dir", rel, None, draw(DIR_MODES), draw(MTIMES)))
    for _ in range(draw(st.integers(0, 7))):
        rel = fresh(draw(st.sampled_from(dirs)))
        entries.append(Entry("file", rel, draw(CONTENTS), draw(FILE_MODES), draw(MTIMES)))
    existing = [e.rel for e in entries]
    for _ in range(draw(st.integers(0, 3))):
        parent = draw(st.sampled_from(dirs))
        rel = fresh(parent)
        how = draw(st.sampled_from(["relative", "relative", "dangling", "absolute", "bytes"]))
        if how == "relative" and existing:
            target = os.path.relpath(draw(st.sampled_from(existing)), parent or b".")
        elif how == "absolute":
            target = b"/nonexistent-ferrolab-test/" + draw(NAMES)
        elif how == "bytes":
            target = b"../\xff\xfe" + draw(NAMES)
        else:
            target = b"missing-" + draw(NAMES)
        entries.append(Entry("symlink", rel, target, None, draw(MTIMES)))
    return Tree(entries, draw(DIR_MODES), draw(MTIMES))


def build(root: bytes, tree: Tree) -> None:
    """Creates the tree; directory modes and times are set last, deepest first."""
    os.mkdir(root)
    for e in tree.entries:
        path = os.path.join(root, e.rel)
        if e.kind == "dir":
            os.mkdir(path)
        elif e.kind == "file":
            write(path, content(*e.payload))
            os.chmod(path, e.mode)
            os.utime(path, ns=(e.mtime_ns, e.mtime_ns))
        else:
            os.symlink(e.payload, path)
            os.utime(path, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
    for e in reversed(tree.entries):
        if e.kind == "dir":
            path = os.path.join(root, e.rel)
            os.chmod(path, e.mode)
            os.utime(path, ns=(e.mtime_ns, e.mtime_ns))
    os.chmod(root, tree.root_mode)
    os.utime(root, ns=(tree.root_mtime_ns, tree.root_mtime_ns))


def counts_of(m: dict[bytes, tuple[Any, ...]]) -> dict[str, int]:
    kinds = [v[0] for v in m.values()]
    return {"files": kinds.count("file"), "dirs": kinds.count("dir"), "symlinks": kinds.count("symlink"),
            "bytes": sum(v[3] for v in m.values() if v[0] == "file")}


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tree=trees(), use_key_file=st.booleans())
def test_random_trees_round_trip_exactly(tmp_path_factory, tree: Tree, use_key_file: bool) -> None:
    base = tmp_path_factory.mktemp("roundtrip")
    try:
        src = os.path.join(os.fsencode(base), b"src")
        build(src, tree)
        expected = manifest(src)
        if use_key_file:
            key = base / "key"
            key.write_bytes(os.urandom(32))
            repo = Repository.init(base / "repo", key_file=key, compression=1)
        else:
            repo = Repository.init(base / "repo", password=b"\xffbytes password")
        snap = repo.backup(os.fsdecode(src))
        assert snap.paths == (os.path.realpath(os.fsdecode(src)),)
        want = counts_of(expected)
        assert (snap.files, snap.dirs, snap.bytes) == (want["files"], want["dirs"], want["bytes"])
        counts, where = restore_tree(repo, snap, base / "out")
        assert counts == want
        got = manifest(where)
        assert got == expected, diff(expected, got)
        # nothing else was written into the target: only the parents of the root
        top = base / "out"
        assert sorted(os.listdir(top)) == [os.path.realpath(os.fsdecode(src)).lstrip("/").split("/")[0]]
    finally:
        force_rmtree(base)


def test_a_fixed_tree_with_every_kind_of_entry_round_trips(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    write(src / "empty", b"", 1_000_000_001)
    write(src / "run.sh", b"#!/bin/sh\necho hi\n", 1_700_000_000_123_456_789)
    os.chmod(src / "run.sh", 0o755)
    write(src / "sub" / "big.bin", rand(3 * MiB + 17, 1), -86_400_000_000_007)  # before 1970
    write(src / "sub" / "deeper" / "x.npy", b"")
    np.save(src / "sub" / "deeper" / "x.npy", np.linspace(0, 1, 100_000))
    latin = os.path.join(os.fsencode(src), b"caf\xe9-\xff.txt")  # not UTF-8
    write(latin, b"latin-1 name", 2_000_000_000_000_000_000)
    os.symlink("sub/big.bin", src / "rel-link")
    os.symlink("../nowhere/at/all", src / "sub" / "dangling")
    os.symlink(b"\xff\xfe-target", os.path.join(os.fsencode(src), b"bytes-link-\x80"))
    os.symlink("sub", src / "dir-link")  # not followed
    os.utime(src / "rel-link", ns=(5, 1_600_000_000_000_000_001), follow_symlinks=False)
    os.utime(src / "sub", ns=(0, 1_650_000_000_999_999_999))
    expected = manifest(src)
    assert len(expected) == 13

    repo = new_repo(tmp_path / "repo")
    snap = repo.backup(src)
    counts, where = restore_tree(repo, snap, tmp_path / "out")
    assert counts == counts_of(expected) == {"files": 5, "dirs": 4, "symlinks": 4, "bytes": counts["bytes"]}
    got = manifest(where)
    assert got == expected, diff(expected, got)
    assert os.readlink(os.path.join(os.fsencode(where), b"bytes-link-\x80")) == b"\xff\xfe-target"

    # include a file whose name is not UTF-8 (as a str with surrogate escapes, the way os.fsdecode gives it)
    counts = repo.restore(snap, target=tmp_path / "one", include=os.fsdecode(latin))
    assert counts["files"] == 1
    one = manifest(restored_root(tmp_path / "one", snap.paths[0]))
    assert {k: v for k, v in one.items() if v[0] != "dir"} == {b"caf\xe9-\xff.txt": expected[b"caf\xe9-\xff.txt"]}


def test_a_root_whose_name_is_not_utf8_round_trips(tmp_path) -> None:
    root = os.path.join(os.fsencode(tmp_path), b"data-\xff")
    write(os.path.join(root, b"sub", b"a.txt"), b"hello", 1_000_000_007)
    expected = manifest(root)
    repo = new_repo(tmp_path / "repo")
    snap = repo.backup(os.fsdecode(root))
    counts = repo.restore(snap, target=tmp_path / "out")
    assert counts == {"files": 1, "dirs": 2, "symlinks": 0, "bytes": 5}
    got = manifest(restored_root(tmp_path / "out", os.fsdecode(os.path.realpath(root))))
    assert got == expected, diff(expected, got)


def test_a_root_whose_name_is_not_utf8_keeps_its_path(tmp_path) -> None:
    root = os.path.join(os.fsencode(tmp_path), b"data-\xff")
    write(os.path.join(root, b"sub", b"a.txt"), b"hello")
    repo = new_repo(tmp_path / "repo")
    snap = repo.backup(os.fsdecode(root))
    assert snap.paths == (os.fsdecode(os.path.realpath(root)),)
    counts = repo.restore(snap, target=tmp_path / "out", include="sub")
    assert counts["files"] == 1


def test_exclude_patterns_leave_out_matching_paths(tmp_path) -> None:
    src = tmp_path / "src"
    write(src / "keep.txt", b"keep")
    write(src / "skip.tmp", b"tmp")
    write(src / "a" / "cache" / "c.bin", b"cache")
    write(src / "a" / "b" / "deep.tmp", b"tmp2")
    write(src / "logs" / "run.log", b"log")
    repo = new_repo(tmp_path / "repo")
    snap = repo.backup(src, exclude=["*.tmp", "cache", str(src.resolve() / "logs")])
    _, where = restore_tree(repo, snap, tmp_path / "out")
    got = {k for k, v in manifest(where).items() if v[0] == "file"}
    assert got == {b"keep.txt"}
    assert snap.files == 1


# --- incremental backups, at= and include= -----------------------------------------------------------------------
def test_incremental_backups_store_only_what_changed_and_old_snapshots_stay_exact(tmp_path) -> None:
    src = tmp_path / "src"
    big = src / "big.bin"
    size = 6 * MiB
    write(big, rand(size, 7))
    write(src / "sub" / "a.txt", b"first version of a\n" * 100)
    write(src / "sub" / "b.txt", b"b" * 5000)
    write(src / "top.txt", b"top")
    repo = new_repo(tmp_path / "repo")
    t0 = datetime(2024, 5, 1, 12, tzinfo=UTC)

    first = repo.backup(src, time=t0)
    assert first.added_bytes > size  # random data does not compress
    v1 = content_manifest(src)

    same = repo.backup(src, time=t0 + timedelta(hours=1))
    assert same.parent == first.id
    assert same.added_bytes < 4096, same.added_bytes

    with open(big, "r+b") as f:  # insert bytes at the start: content-defined chunks realign
        rest = f.read()
        f.seek(0)
        f.write(b"inserted at the start " * 7 + rest)
    write(src / "sub" / "a.txt", b"second version of a\n" * 100)
    second = repo.backup(src, time=t0 + timedelta(hours=2))
    assert second.bytes == first.bytes + 7 * 22 + 100
    # at most two chunks (max 512 KiB each) of the big file, plus metadata
    assert second.added_bytes < 3 * MiB // 2, second.added_bytes
    assert second.added_bytes < size // 4
    v2 = content_manifest(src)
    assert v1 != v2

    for snap, want in ((first, v1), (same, v1), (second, v2)):
        _, where = restore_tree(repo, snap, tmp_path / f"out-{snap.short_id}")
        got = content_manifest(where)
        assert got == want, diff(want, got)

    # at=: the newest snapshot at or before the time
    _, where = restore_tree(repo, "latest", tmp_path / "at1", root=first.paths[0], at="2024-05-01T12:30:00+00:00")
    assert content_manifest(where) == v1
    assert [s.id for s in repo.snapshots()] == [first.id, same.id, second.id]
    counts = repo.restore(target=tmp_path / "at2", at=t0 + timedelta(hours=2, minutes=1))
    assert content_manifest(restored_root(tmp_path / "at2", first.paths[0])) == v2
    assert counts["bytes"] == second.bytes
    counts = repo.restore(target=tmp_path / "at3", at=t0 + timedelta(hours=1))  # exactly at a snapshot's time
    assert content_manifest(restored_root(tmp_path / "at3", first.paths[0])) == v1
    with pytest.raises(ValueError, match="no snapshot at or before"):
        repo.restore(target=tmp_path / "at4", at=t0 - timedelta(seconds=1))
    assert not (tmp_path / "at4").exists()

    # include: a subtree (relative to the snapshot's root) and one file (absolute)
    counts = repo.restore(first, target=tmp_path / "inc1", include="sub")
    got = content_manifest(restored_root(tmp_path / "inc1", first.paths[0]))
    assert {k: v for k, v in got.items() if v[0] == "file"} == {k: v for k, v in v1.items() if k.startswith(b"sub/")}
    assert counts["files"] == 2
    counts = repo.restore(second, target=tmp_path / "inc2", include=[os.path.join(first.paths[0], "big.bin")])
    got = content_manifest(restored_root(tmp_path / "inc2", first.paths[0]))
    assert {k: v for k, v in got.items() if v[0] == "file"} == {b"big.bin": v2[b"big.bin"]}
    assert counts == {"files": 1, "dirs": 0, "symlinks": 0, "bytes": size + 7 * 22}
    with pytest.raises(ValueError, match="matches nothing"):
        repo.restore(second, target=tmp_path / "inc3", include="no/such/file")


def test_unchanged_files_are_not_read_again(tmp_path) -> None:
    src = tmp_path / "src"
    for i in range(20):
        write(src / f"f{i}.bin", rand(50_000, i))
    repo = new_repo(tmp_path / "repo")
    repo.backup(src)
    write(src / "f3.bin", rand(50_000, 1000))
    events: list[dict[str, Any]] = []
    snap = repo.backup(src, progress=events.append)
    assert snap.files == 20 and snap.bytes == 20 * 50_000
    assert 50_000 <= snap.added_bytes < 60_000 + 8192
    assert events[-1]["done_bytes"] == events[-1]["total_bytes"] == 20 * 50_000


# --- passwords, missing repositories, init -----------------------------------------------------------------------
def test_wrong_password_and_key_file_mismatches(tmp_path) -> None:
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    other_key = tmp_path / "other"
    other_key.write_bytes(os.urandom(32))
    new_repo(tmp_path / "pw")
    Repository.init(tmp_path / "kf", key_file=key)

    with pytest.raises(fl.backup.WrongPassword, match="wrong password"):
        Repository.open(tmp_path / "pw", password=PASSWORD + "x")
    with pytest.raises(fl.backup.WrongPassword, match="wrong key file"):
        Repository.open(tmp_path / "pw", key_file=key)
    with pytest.raises(fl.backup.WrongPassword):
        Repository.open(tmp_path / "kf", key_file=other_key)
    with pytest.raises(fl.backup.WrongPassword):
        Repository.open(tmp_path / "kf", password=PASSWORD)
    # a password equal to the key file's bytes is still a password (different derivation)
    with pytest.raises(fl.backup.WrongPassword):
        Repository.open(tmp_path / "kf", password=key.read_bytes())
    assert issubclass(fl.backup.WrongPassword, fl.backup.BackupError)
    assert issubclass(fl.backup.BackupError, fl.FerrolabError)
    Repository.open(tmp_path / "pw", password=PASSWORD)
    Repository.open(tmp_path / "kf", key_file=key)


def test_missing_repository(tmp_path) -> None:
    with pytest.raises(fl.backup.RepositoryNotFound):
        Repository.open(tmp_path / "nothing-here", password=PASSWORD)
    (tmp_path / "empty").mkdir()
    with pytest.raises(fl.backup.RepositoryNotFound):
        Repository.open(tmp_path / "empty", password=PASSWORD)
    assert os.listdir(tmp_path / "empty") == []
    assert not (tmp_path / "nothing-here").exists()


def test_init_on_an_existing_repository_fails_and_leaves_it_intact(tmp_path) -> None:
    src = tmp_path / "src"
    write(src / "a", b"a")
    repo = new_repo(tmp_path / "repo")
    snap = repo.backup(src)
    before = repo_files(tmp_path / "repo")
    for password in (PASSWORD, "another password"):
        with pytest.raises(fl.backup.BackupError, match="already exists"):
            new_repo(tmp_path / "repo", password=password)
    assert repo_files(tmp_path / "repo") == before
    again = Repository.open(tmp_path / "repo", password=PASSWORD)
    assert again.id == repo.id and [s.id for s in again.snapshots()] == [snap.id]


def test_init_refuses_a_non_empty_directory(tmp_path) -> None:
    (tmp_path / "dir").mkdir()
    write(tmp_path / "dir" / "someone-elses-file", b"x")
    with pytest.raises((fl.backup.BackupError, OSError)):
        new_repo(tmp_path / "dir")


# --- damage found by verify ---------------------------------------------------------------------------------------
class Damaged(NamedTuple):
    repo: Repository
    path: Any
    src: Any
    snaps: list[fl.backup.Snapshot]
    files: list[str]  # the absolute original path of the file each backup added
    packs: list[list[str]]  # the pack ids each backup wrote
    indexes: list[list[str]]  # the index objects each backup wrote
    manifests: list[dict[bytes, Any]]


@pytest.fixture
def three(tmp_path) -> Damaged:
    """A repository with three snapshots; backup k adds one file ``f{k}.bin``, so each backup's packs hold data of
    exactly one file (and that snapshot's metadata, at the end)."""
    src = tmp_path / "src"
    src.mkdir()
    repo = new_repo(tmp_path / "repo")
    snaps, files, packs, indexes, manifests = [], [], [], [], []
    for k in range(3):
        name = src / f"f{k}.bin"
        write(name, rand(300_000 + 1000 * k, 100 + k))
        before_p, before_i = set(objects(tmp_path / "repo", "data")), set(objects(tmp_path / "repo", "index"))
        snaps.append(repo.backup(src))
        packs.append(sorted(set(objects(tmp_path / "repo", "data")) - before_p))
        indexes.append(sorted(set(objects(tmp_path / "repo", "index")) - before_i))
        files.append(os.path.join(os.path.realpath(src), name.name))
        manifests.append(content_manifest(src))
        assert len(packs[-1]) == 1 and len(indexes[-1]) == 1
    report = repo.verify()
    assert report.ok, str(report)
    return Damaged(repo, tmp_path / "repo", src, snaps, files, packs, indexes, manifests)


def pack_file(d: Damaged, pack_id: str) -> str:
    return objects(d.path, "data")[pack_id]


def errors_about(report: fl.backup.VerifyReport, needle: str) -> list[fl.backup.VerifyError]:
    return [e for e in report.errors if needle in e.item]


def test_verify_of_an_intact_repository(three: Damaged) -> None:
    full = three.repo.verify()
    quick = three.repo.verify(read_data=False)
    assert full.ok and quick.ok and bool(full) and bool(quick)
    assert full.errors == [] and quick.errors == []
    assert full.snapshots == quick.snapshots == 3
    assert full.packs == quick.packs == 3
    assert full.blobs == quick.blobs > 3
    assert full.bytes_read >= repo_bytes(three.path, "data")
    assert quick.bytes_read < repo_bytes(three.path, "data")


@pytest.mark.parametrize("where", ["first blob", "middle", "header", "length"])
def test_verify_names_each_damaged_pack_and_the_file_it_holds(three: Damaged, where: str) -> None:
    """One pack at a time: a byte flipped in its first blob (data of the file that backup added), in its middle,
    in its sealed header or in the header length at its end."""
    for k, (pack_id,) in enumerate(three.packs):
        path = pack_file(three, pack_id)
        size = os.path.getsize(path)
        offset = {"first blob": 30, "middle": size // 3, "header": -40, "length": -2}[where]
        pos = flip_byte(path, offset)
        report = three.repo.verify()
        assert not report.ok
        damaged_packs = {e.item for e in report.errors if e.item.startswith("pack ")}
        assert damaged_packs == {f"pack {pack_id}"}, str(report)
        if where in ("first blob", "middle"):
            data = [e for e in report.errors if e.kind == "data"]
            assert data and all(three.files[k] in e.item for e in data), str(report)
            assert all(pack_id in e.message for e in data)
            # every snapshot that holds the file is named (up to three)
            for s in three.snaps[k:]:
                assert any(f"snapshot {s.short_id}" in e.item for e in data), str(report)
            # the other files are not reported
            assert not any(f in e.item for e in report.errors for f in three.files if f != three.files[k])
            with pytest.raises(fl.backup.CorruptionError, match=re.escape(three.files[k])):
                three.repo.restore(three.snaps[-1], target=three.path.parent / f"out-{where}-{k}")
            # the intact files of the same snapshot still restore
            others = [f for f in three.files if f != three.files[k]]
            three.repo.restore(three.snaps[-1], target=three.path.parent / f"ok-{where}-{k}", include=others)
        flip_byte(path, pos)  # repaired
        assert three.repo.verify().ok


def test_verify_names_a_damaged_snapshot_metadata_blob(three: Damaged) -> None:
    """The last blob of a backup's pack is its snapshot's metadata (the item stream)."""
    path = pack_file(three, three.packs[1][0])
    with open(path, "rb") as f:
        data = f.read()
    header_len = int.from_bytes(data[-4:], "little")
    flip_byte(path, len(data) - 4 - header_len - 1)  # the tag of the last blob
    report = three.repo.verify()
    assert not report.ok
    short = three.snaps[1].short_id
    assert any(e.kind == "data" and f"snapshot {short} (metadata)" in e.item for e in report.errors), str(report)
    assert any(e.item == f"snapshot {three.snaps[1].id}" for e in report.errors), str(report)
    with pytest.raises(fl.backup.CorruptionError, match=three.snaps[1].id):
        three.repo.restore(three.snaps[1], target=three.path.parent / "out")
    _, where = restore_tree(three.repo, three.snaps[2], three.path.parent / "out2")
    assert content_manifest(where) == three.manifests[2]


def test_verify_names_a_damaged_index_and_snapshot_object(three: Damaged) -> None:
    index_id = three.indexes[1][0]
    flip_byte(objects(three.path, "index")[index_id], 60)
    for read_data in (False, True):
        report = three.repo.verify(read_data=read_data)
        assert [e.item for e in report.errors] == [f"index {index_id}"], str(report)
    # the index's packs are found again from their headers: every snapshot still restores
    for k, s in enumerate(three.snaps):
        _, where = restore_tree(three.repo, s, three.path.parent / f"out{k}")
        assert content_manifest(where) == three.manifests[k]

    snap = three.snaps[0]
    flip_byte(objects(three.path, "snapshots")[snap.id], 50)
    report = three.repo.verify(read_data=False)
    assert {e.item for e in report.errors} == {f"index {index_id}", f"snapshot {snap.id}"}, str(report)
    with pytest.warns(RuntimeWarning, match=f"snapshot {snap.short_id} cannot be read"):  # reported, not hidden
        assert [s.id for s in three.repo.snapshots()] == [s.id for s in three.snaps[1:]]
    with pytest.raises(fl.backup.CorruptionError, match=snap.id):
        three.repo.restore(snap, target=three.path.parent / "bad")


def test_verify_reports_every_damaged_item_at_once(three: Damaged, capsys, monkeypatch) -> None:
    for (pack_id,) in three.packs:
        flip_byte(pack_file(three, pack_id), 100)
    index_id = three.indexes[2][0]
    flip_byte(objects(three.path, "index")[index_id], -5)
    snap_id = three.snaps[0].id
    flip_byte(objects(three.path, "snapshots")[snap_id], 40)

    report = three.repo.verify()
    assert not report.ok
    items = [e.item for e in report.errors]
    for (pack_id,) in three.packs:
        assert f"pack {pack_id}" in items, str(report)
    for f in three.files:
        assert any(e.kind == "data" and f in e.item for e in report.errors), (f, str(report))
    assert f"index {index_id}" in items
    assert f"snapshot {snap_id}" in items
    assert len(report.errors) == 3 + 3 + 2, str(report)  # each pack: its name; each file's chunk; index; snapshot

    # the command prints every error and exits 1
    monkeypatch.setenv("FERROLAB_PASSWORD", PASSWORD)
    assert cli.main(["backup", "-r", str(three.path), "verify", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"repository damaged: {len(report.errors)} errors")
    for e in report.errors:
        assert str(e) in out
    assert cli.main(["backup", "-r", str(three.path), "verify", "--json"]) == 1
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["ok"] is False and len(as_json["errors"]) == len(report.errors)
    # metadata-only: the damaged index and snapshot, not the data
    assert cli.main(["backup", "-r", str(three.path), "verify", "--metadata-only"]) == 1
    out = capsys.readouterr().out
    assert f"index {index_id}" in out and f"snapshot {snap_id}" in out
    assert not any(pack_id in out for (pack_id,) in three.packs)


def test_verify_of_an_intact_repository_by_the_command(three: Damaged, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FERROLAB_PASSWORD", PASSWORD)
    assert cli.main(["backup", "-r", str(three.path), "verify"]) == 0
    assert capsys.readouterr().out.startswith("repository ok: 3 snapshots, 3 packs")


def test_a_missing_pack_is_found_without_reading_data(three: Damaged) -> None:
    """Backup 0's pack held f0.bin and snapshot 0's metadata."""
    pack_id = three.packs[0][0]
    os.remove(pack_file(three, pack_id))
    report = three.repo.verify(read_data=False)
    assert not report.ok
    assert report.bytes_read < repo_bytes(three.path, "data")
    assert any(e.item == f"pack {pack_id}" and e.kind == "missing pack" for e in report.errors), str(report)
    assert any(e.item == f"snapshot {three.snaps[0].id}" and e.kind == "tree" for e in report.errors), str(report)
    missing = [e for e in report.errors if e.kind == "missing chunk"]
    assert missing and all(three.files[0] in e.item and pack_id in e.message for e in missing), str(report)
    assert {e.item.rpartition("(snapshot ")[2].rstrip(")") for e in missing} == {s.short_id for s in three.snaps[1:]}
    assert not any(f in str(report) for f in three.files[1:])
    with pytest.raises(fl.backup.CorruptionError, match="prune refused"):
        three.repo.prune()  # it cannot know what snapshot 0 needs
    # the files of the intact packs still restore
    three.repo.restore(three.snaps[2], target=three.path.parent / "ok", include=three.files[1:])


def test_restore_of_a_file_whose_pack_is_missing_names_the_file(three: Damaged) -> None:
    os.remove(pack_file(three, three.packs[0][0]))
    try:
        three.repo.restore(three.snaps[2], target=three.path.parent / "out")
    except fl.backup.CorruptionError as e:
        assert three.files[0] in str(e)
    except OSError as e:
        raise AssertionError(f"{type(e).__name__}: {e}") from None
    else:
        raise AssertionError("restore succeeded")


# --- concurrent backups, locks ------------------------------------------------------------------------------------
def test_two_processes_back_up_into_one_repository_at_the_same_time(tmp_path) -> None:
    new_repo(tmp_path / "repo")
    shared = rand(2 * MiB, 99)  # the same data in both: both store it, since neither knew of the other
    for name in ("a", "b"):
        write(tmp_path / name / "own.bin", rand(3 * MiB, ord(name)))
        write(tmp_path / name / "shared.bin", shared)
        for i in range(30):
            write(tmp_path / name / "small" / f"{i}.txt", f"{name} {i}\n".encode() * (i + 1))
    expected = {name: content_manifest(tmp_path / name) for name in ("a", "b")}
    procs = {
        "a": spawn("together", tmp_path / "repo", tmp_path / "a", tmp_path / "ready-a", tmp_path / "ready-b"),
        "b": spawn("together", tmp_path / "repo", tmp_path / "b", tmp_path / "ready-b", tmp_path / "ready-a"),
    }
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        results[name] = json.loads(out)
        # both stored the shared data (3 MiB own + 2 MiB shared): they really ran together
        assert results[name]["added_bytes"] > 4 * MiB
    repo = Repository.open(tmp_path / "repo", password=PASSWORD)
    assert {s.id for s in repo.snapshots()} == {r["id"] for r in results.values()}
    assert objects(tmp_path / "repo", "locks") == {}
    report = repo.verify()
    assert report.ok, str(report)
    for name, r in results.items():
        _, where = restore_tree(repo, r["id"], tmp_path / f"out-{name}", root=os.path.realpath(tmp_path / name))
        got = content_manifest(where)
        assert got == expected[name], diff(expected[name], got)
    # forgetting one and pruning keeps the other whole, although their data was stored twice
    repo.forget(keep_last=1, group_by=None)
    repo.prune()
    assert repo.verify().ok
    (kept,) = repo.snapshots()
    name = next(n for n, r in results.items() if r["id"] == kept.id)
    _, where = restore_tree(repo, kept, tmp_path / "after-prune")
    assert content_manifest(where) == expected[name]


def hold_lock(tmp_path: Any, tag: str) -> Any:
    """A child process that holds a shared lock of the repository (inside a backup) until it is killed."""
    ready = tmp_path / f"ready-{tag}"
    p = spawn("hold", tmp_path / "repo", tmp_path / "src", ready)
    wait_for([ready], proc=p)
    return p


def test_a_live_lock_blocks_prune_and_stale_locks_block_nothing(tmp_path) -> None:
    src = tmp_path / "src"
    write(src / "data.bin", rand(MiB, 5))
    repo = new_repo(tmp_path / "repo")
    first = repo.backup(src)

    # a live backup: shared locks do not block each other, the exclusive lock of prune is refused
    p = hold_lock(tmp_path, "live")
    try:
        assert len(objects(tmp_path / "repo", "locks")) == 1
        with pytest.raises(fl.backup.LockedError, match=f"pid {p.pid}"):
            repo.prune()
        assert repo.verify().ok
        repo.backup(src)
        assert repo.unlock() == 0  # the lock of a live process is not stale
        assert len(objects(tmp_path / "repo", "locks")) == 1
    finally:
        kill(p)

    # its process died: the lock is stale and unlock removes it
    assert len(objects(tmp_path / "repo", "locks")) == 1
    assert repo.unlock() == 1
    assert objects(tmp_path / "repo", "locks") == {}
    assert repo.unlock() == 0

    # a stale lock does not block prune (which removes it)
    repo.forget(keep_last=1)
    kill(hold_lock(tmp_path, "prune"))
    assert len(objects(tmp_path / "repo", "locks")) == 1
    repo.prune()
    assert objects(tmp_path / "repo", "locks") == {}

    # nor a backup or verify
    kill(hold_lock(tmp_path, "backup"))
    write(src / "more.bin", rand(MiB, 6))
    snap = repo.backup(src)
    report = repo.verify()
    assert report.ok, str(report)
    assert objects(tmp_path / "repo", "locks") == {}
    _, where = restore_tree(repo, snap, tmp_path / "out")
    assert content_manifest(where) == content_manifest(src)
    assert first.id not in {s.id for s in repo.snapshots()}


# --- forget + prune -----------------------------------------------------------------------------------------------
def test_forget_and_prune_free_space_and_keep_the_rest_exact(tmp_path) -> None:
    src = tmp_path / "src"
    write(src / "stays.bin", rand(MiB, 1))
    repo = new_repo(tmp_path / "repo")
    snaps, manifests = [], []
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for k in range(5):
        write(src / "changes.bin", rand(2 * MiB, 10 + k))  # replaced each time
        write(src / f"grows-{k}.txt", f"{k}\n".encode() * 1000)
        if k == 3:
            os.remove(src / "stays.bin")
        snaps.append(repo.backup(src, time=t0 + timedelta(days=k)))
        manifests.append(content_manifest(src))
    before = repo_bytes(tmp_path / "repo")

    plan = repo.forget(keep_last=2, dry_run=True)
    assert [s.id for s in plan.remove] == [s.id for s in reversed(snaps[:3])]
    assert len(repo.snapshots()) == 5
    result = repo.forget(keep_last=2)
    assert [s.id for s in repo.snapshots()] == [s.id for s in snaps[3:]]
    assert [s.id for s in result.keep] == [snaps[4].id, snaps[3].id]
    assert repo_bytes(tmp_path / "repo") == before  # forget alone frees nothing

    stats = repo.prune()
    after = repo_bytes(tmp_path / "repo")
    assert stats["packs_deleted"] >= 1 and stats["bytes_freed"] > 0
    assert after < before - 5 * MiB, (before, after, stats)  # three versions of changes.bin and stays.bin
    report = repo.verify()
    assert report.ok, str(report)
    assert report.snapshots == 2
    for k in (3, 4):
        _, where = restore_tree(repo, snaps[k], tmp_path / f"out{k}")
        got = content_manifest(where)
        assert got == manifests[k], diff(manifests[k], got)
    assert repo.prune()["bytes_freed"] == 0  # nothing more to free
    assert repo_bytes(tmp_path / "repo") == after


def test_prune_rewrites_a_mostly_unused_pack(tmp_path) -> None:
    src = tmp_path / "src"
    write(src / "big.bin", rand(4 * MiB, 1))
    write(src / "small.bin", rand(200_000, 2))
    repo = new_repo(tmp_path / "repo")
    repo.backup(src)  # one pack with both files
    os.remove(src / "big.bin")
    keep = repo.backup(src)
    expected = content_manifest(src)
    repo.forget(keep_last=1)
    stats = repo.prune()
    assert stats["packs_rewritten"] == 1 and stats["bytes_freed"] > 4 * MiB
    assert repo_bytes(tmp_path / "repo") < MiB
    assert repo.verify().ok
    _, where = restore_tree(repo, keep, tmp_path / "out")
    assert content_manifest(where) == expected


# --- metrics and progress -----------------------------------------------------------------------------------------
def sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_backup_metrics_are_exposed(tmp_path) -> None:
    src = tmp_path / "src"
    write(src / "a.bin", rand(300_000, 3))
    repo = new_repo(tmp_path / "repo")
    before = fl.metrics.exposition()
    snap = repo.backup(src)
    text = fl.metrics.exposition()
    label = str(tmp_path / "repo")
    assert repo.url == label
    line = f'ferrolab_backup_last_success_timestamp_seconds{{repository="{label}"}} '
    assert line in text
    assert sample(text, "ferrolab_backup_last_success_timestamp_seconds", repository=label) == pytest.approx(
        snap.time.timestamp(), abs=1e-3)
    assert "# TYPE ferrolab_backup_bytes_total counter" in text
    for kind, value in (("read", snap.bytes), ("added", snap.added_bytes)):
        delta = sample(text, "ferrolab_backup_bytes_total", kind=kind) - sample(before, "ferrolab_backup_bytes_total",
                                                                                 kind=kind)
        assert delta == value, kind
    assert "# TYPE ferrolab_backup_duration_seconds histogram" in text
    count = "ferrolab_backup_duration_seconds_count"
    assert sample(text, count, operation="backup") == sample(before, count, operation="backup") + 1
    assert 'ferrolab_backup_duration_seconds_bucket{le="+Inf",operation="backup"}' in text
    assert sample(text, "ferrolab_backup_duration_seconds_sum", operation="backup") > sample(
        before, "ferrolab_backup_duration_seconds_sum", operation="backup")

    # restore counts restored bytes; an older backup time never moves the gauge back
    counts = repo.restore(snap, target=tmp_path / "out")
    later = fl.metrics.exposition()
    assert sample(later, "ferrolab_backup_bytes_total", kind="restored") - sample(
        text, "ferrolab_backup_bytes_total", kind="restored") == counts["bytes"] == 300_000
    repo.backup(src, time=snap.time - timedelta(days=1))
    assert sample(fl.metrics.exposition(), "ferrolab_backup_last_success_timestamp_seconds",
                  repository=label) == pytest.approx(snap.time.timestamp(), abs=1e-3)


def check_progress(events: list[dict[str, Any]], phase: str, total: int) -> None:
    assert events, "no progress reported"
    for e in events:
        assert set(e) == {"phase", "done_bytes", "total_bytes", "done_files", "total_files"}
        assert 0 <= e["done_bytes"] and (e["total_bytes"] == 0 or e["done_bytes"] <= e["total_bytes"]), e
    ours = [e for e in events if e["phase"] == phase]
    done = [e["done_bytes"] for e in ours]
    assert done == sorted(done), done
    last = events[-1]
    assert last["phase"] == phase
    assert last["done_bytes"] == last["total_bytes"] == total, last
    assert last["done_files"] == last["total_files"], last


def test_progress_callbacks_end_with_everything_done(tmp_path) -> None:
    src = tmp_path / "src"
    for i in range(40):
        write(src / f"{i}.bin", rand(100_000 + i, i))
    write(src / "big.bin", rand(12 * MiB, 77))
    repo = new_repo(tmp_path / "repo")
    events: list[dict[str, Any]] = []
    snap = repo.backup(src, progress=events.append)
    check_progress(events, "backup", snap.bytes)
    assert {e["phase"] for e in events} <= {"scan", "backup"}
    assert events[-1]["total_files"] == 41

    events = []
    counts = repo.restore(snap, target=tmp_path / "out", progress=events.append)
    check_progress(events, "restore", counts["bytes"])
    assert counts["bytes"] == snap.bytes


def test_progress_true_draws_bars_on_stderr(tmp_path, capsys) -> None:
    src = tmp_path / "src"
    write(src / "a.bin", rand(2 * MiB, 1))
    repo = new_repo(tmp_path / "repo")
    snap = repo.backup(src, progress=True)
    repo.restore(snap, target=tmp_path / "out", progress=True)
    assert repo.verify(progress=True).ok
    repo.prune(progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "backup" in err and "restore" in err


def test_verify_progress_ends_with_everything_done(tmp_path) -> None:
    src = tmp_path / "src"
    write(src / "a.bin", rand(2 * MiB, 1))
    repo = new_repo(tmp_path / "repo")
    repo.backup(src)
    events: list[dict[str, Any]] = []
    report = repo.verify(progress=events.append)
    check_progress(events, "verify", report.bytes_read)


def test_a_failing_progress_callback_propagates(tmp_path) -> None:
    src = tmp_path / "src"
    write(src / "a.bin", b"a")
    repo = new_repo(tmp_path / "repo")
    snap = repo.backup(src)

    def boom(info: dict[str, Any]) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        repo.restore(snap, target=tmp_path / "out", progress=boom)


# --- bad input ----------------------------------------------------------------------------------------------------
def test_bad_input_raises_before_anything_is_written(tmp_path) -> None:
    src = tmp_path / "src"
    write(src / "a.bin", rand(10_000, 1))
    repo = new_repo(tmp_path / "repo")
    snap = repo.backup(src)
    before = repo_files(tmp_path / "repo")

    for call in (
        lambda: repo.backup(123),
        lambda: repo.backup([src, 5]),
        lambda: repo.backup(b"/bytes/path"),
        lambda: repo.backup(src, tags=5),
        lambda: repo.backup(src, exclude=[b"*.tmp"]),
        lambda: repo.backup(src, progress="yes"),
        lambda: repo.backup(src, host=3),
        lambda: repo.backup(src, time="yesterday"),
        lambda: repo.restore(snap, target=5),
        lambda: repo.restore(5, target=tmp_path / "out"),
        lambda: repo.restore(snap, target=tmp_path / "out", include=7),
        lambda: repo.verify(read_data="yes"),
        lambda: repo.forget(keep_last="2"),
        lambda: repo.prune(progress=1),
    ):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(FileNotFoundError):
        repo.backup(tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as exc:
        repo.backup([src, tmp_path / "also-missing"])
    assert exc.value.filename == str(tmp_path / "also-missing")
    with pytest.raises(ValueError):
        repo.backup([])
    assert repo_files(tmp_path / "repo") == before
    assert [s.id for s in repo.snapshots()] == [snap.id]
    assert not (tmp_path / "out").exists()


def test_a_backup_of_a_file_and_of_a_symlink_root(tmp_path) -> None:
    write(tmp_path / "notes.txt", b"notes", 1_234_567_890_123_456_789)
    os.chmod(tmp_path / "notes.txt", 0o600)
    os.symlink("notes.txt", tmp_path / "link")
    repo = new_repo(tmp_path / "repo")
    snap = repo.backup([tmp_path / "notes.txt", tmp_path / "link"])
    assert snap.files == 1 and snap.dirs == 0
    counts = repo.restore(snap, target=tmp_path / "out")
    assert counts == {"files": 1, "dirs": 0, "symlinks": 1, "bytes": 5}
    restored = restored_root(tmp_path / "out", str(tmp_path.resolve()))
    st_ = os.lstat(os.path.join(restored, "notes.txt"))
    assert (stat.S_IMODE(st_.st_mode), st_.st_mtime_ns) == (0o600, 1_234_567_890_123_456_789)
    assert os.readlink(os.path.join(restored, "link")) == "notes.txt"
    assert file_digest(os.path.join(restored, "notes.txt")) == file_digest(tmp_path / "notes.txt")


# --- times that datetime cannot show ----------------------------------------------------------------------------
@pytest.mark.parametrize("when", [1_700_000_000_000, 1e20, -1e20, -62_135_596_800])
def test_backup_refuses_a_time_out_of_range_before_writing_anything(tmp_path, when: float) -> None:
    """``time=time.time() * 1000`` (milliseconds by mistake) used to store a snapshot that no listing could read."""
    src = tmp_path / "src"
    write(src / "a", b"a")
    repo = new_repo(tmp_path / "repo")
    snap = repo.backup(src)
    before = repo_files(tmp_path / "repo")
    with pytest.raises(ValueError, match=r"backup\(\): argument 'time' is .*expected a time from 0001-01-02 to "
                                         r"9999-12-30"):
        repo.backup(src, time=when)
    assert repo_files(tmp_path / "repo") == before
    assert [s.id for s in repo.snapshots()] == [snap.id]


def test_backup_names_milliseconds_and_accepts_the_ends_of_the_range(tmp_path) -> None:
    src = tmp_path / "src"
    write(src / "a", b"a")
    repo = new_repo(tmp_path / "repo")
    with pytest.raises(ValueError, match="milliseconds"):
        repo.backup(src, time=1_700_000_000_123)
    with pytest.raises(ValueError, match=r"backup\(\): argument 'time'"):
        repo.backup(src, time=datetime(9999, 12, 31, 12, tzinfo=UTC))
    oldest = repo.backup(src, time=datetime(1, 1, 2, tzinfo=UTC))
    newest = repo.backup(src, time=datetime(9999, 12, 30, tzinfo=UTC))
    assert [s.time for s in repo.snapshots()] == [oldest.time, newest.time]
    assert oldest.time.year == 1 and newest.time.year == 9999


@pytest.mark.parametrize("stored", [1e20, 1_800_000_000_000.0, -1e20])
def test_a_stored_time_out_of_range_does_not_break_the_other_snapshots(tmp_path, capsys, monkeypatch, caplog,
                                                                       stored: float) -> None:
    """A snapshot written by an older version with such a time (here through the native call, which does not
    check it) is listed with its time clamped to the range, and every command still works."""
    src = tmp_path / "src"
    write(src / "doc.txt", b"good")
    repo = new_repo(tmp_path / "repo")
    good = repo.backup(src, time=1_700_000_000)
    write(src / "doc.txt", b"odd time")
    odd_id = repo._native.backup([str(src)], time=stored)["id"]

    with caplog.at_level("WARNING", logger="ferrolab.backup"):
        snaps = repo.snapshots()
    odd = next(s for s in snaps if s.id == odd_id)
    # milliseconds (what older versions stored for backup(time=time.time() * 1000)) read as such; any other time
    # outside the range reads as the oldest, never the newest
    millis = stored == 1_800_000_000_000.0
    expected = datetime.fromtimestamp(stored / 1000, UTC) if millis else fl.backup._TIME_MIN
    assert odd.time == expected and odd.time.tzinfo is not None
    assert any(odd_id[:8] in r.getMessage() and "year" in r.getMessage() for r in caplog.records)
    assert {s.id for s in snaps} == {good.id, odd_id}
    assert json.dumps(odd.to_dict())  # JSON-ready

    assert repo.restore(good.id, target=tmp_path / "by-id")["files"] == 1
    latest = repo.restore("latest", target=tmp_path / "latest")
    assert latest["files"] == 1
    assert repo.restore(target=tmp_path / "at", at="2024-01-01T00:00:00Z")["files"] == 1
    monkeypatch.setenv("FERROLAB_PASSWORD", PASSWORD)
    assert cli.main(["backup", "-r", str(tmp_path / "repo"), "list"]) == 0
    out = capsys.readouterr().out
    assert good.short_id in out and odd_id[:8] in out
    assert cli.main(["backup", "-r", str(tmp_path / "repo"), "restore", good.short_id,
                     "--target", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    result = repo.forget(keep_last=1, dry_run=True)
    assert [s.id for s in result.keep] == [odd_id if millis else good.id]


def test_a_stored_time_that_is_not_a_number_reads_as_the_oldest() -> None:
    t = fl.backup.Snapshot._from_native({"id": "ab" * 32, "time": float("nan")}).time
    assert t == fl.backup._TIME_MIN
    assert fl.backup.Snapshot._from_native({"id": "ab" * 32, "time": None}).time == fl.backup._TIME_MIN
    for tz in (timezone(timedelta(hours=23, minutes=59)), timezone(timedelta(hours=-23, minutes=-59))):
        fl.backup._TIME_MIN.astimezone(tz)  # the ends of the range can be shown in every time zone
        fl.backup._TIME_MAX.astimezone(tz)


# --- what a backup could not read ---------------------------------------------------------------------------------
def special_tree(root: Any) -> list[str]:
    """A tree with a FIFO and a socket beside a file: neither is backed up, as root too; their paths."""
    import socket

    write(root / "ok.txt", b"ok")
    fifo = os.path.join(os.fspath(root), "fifo")
    os.mkfifo(fifo)
    sock_path = os.path.join(os.fspath(root), "sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(sock_path)
    return [fifo, sock_path]


def test_items_a_backup_could_not_store_are_reported(tmp_path, caplog) -> None:
    src = tmp_path / "src"
    skipped = special_tree(src)
    repo = new_repo(tmp_path / "repo")
    with caplog.at_level("WARNING", logger="ferrolab.backup"):
        snap = repo.backup(src)
    assert snap.files == 1
    assert isinstance(snap.warnings, tuple) and len(snap.warnings) == 2
    for path in skipped:
        assert any(w.startswith(os.path.realpath(path) + ":") or w.startswith(path + ":") for w in snap.warnings), \
            snap.warnings
        assert any(path.rsplit("/", 1)[1] in r.getMessage() and r.levelname == "WARNING" and r.name ==
                   "ferrolab.backup" for r in caplog.records)
    assert snap.to_dict()["warnings"] == list(snap.warnings)
    (listed,) = repo.snapshots()  # stored in the snapshot: read back too
    assert listed.warnings == snap.warnings
    clean = repo.backup(src / "ok.txt")
    assert clean.warnings == ()


def without_read_override(tmp_path: Any, *argv: str) -> list[str]:
    """``argv`` run so that file permissions apply: as is for a user, and as root through ``setpriv`` without the
    capabilities that let root read anything (skips when that is not possible here)."""
    if os.geteuid() != 0:
        return list(argv)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: permissions do not stop root from reading")
    wrapped = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *argv]
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    r = subprocess.run([*wrapped[:3], "cat", str(probe)], capture_output=True)
    probe.unlink()
    if r.returncode == 0:
        pytest.skip("running as root and setpriv cannot drop CAP_DAC_OVERRIDE here")
    return wrapped


def test_a_file_and_a_folder_without_permission_are_reported(tmp_path) -> None:
    """The report of the bug: chmod 000 items were left out, the command said nothing and exited 0."""
    src = tmp_path / "src"
    write(src / "ok.txt", b"ok")
    write(src / "secret.key", b"k")
    write(src / "private" / "db.sqlite", b"x")
    repo = new_repo(tmp_path / "repo")
    os.chmod(src / "secret.key", 0)
    os.chmod(src / "private", 0)
    try:
        argv = without_read_override(tmp_path, sys.executable, "-m", "ferrolab", "backup", "-r",
                                     str(tmp_path / "repo"), "create", "--no-progress", str(src))
        r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "FERROLAB_PASSWORD": PASSWORD},
                           timeout=120)
    finally:
        os.chmod(src / "private", 0o700)
        os.chmod(src / "secret.key", 0o600)
    assert r.returncode == 3, r.stderr
    for name in ("secret.key", "private"):
        assert re.search(rf"warning: \S*{re.escape(name)}: Permission denied", r.stderr), r.stderr
    (snap,) = repo.snapshots()
    assert snap.files == 1 and len(snap.warnings) == 2
    assert all("Permission denied" in w for w in snap.warnings)


def test_the_command_prints_what_it_could_not_read_and_exits_3(tmp_path, capsys, monkeypatch) -> None:
    src = tmp_path / "src"
    skipped = special_tree(src)
    new_repo(tmp_path / "repo")
    monkeypatch.setenv("FERROLAB_PASSWORD", PASSWORD)
    code = cli.main(["backup", "-r", str(tmp_path / "repo"), "create", str(src)])
    out, err = capsys.readouterr()
    assert code == 3
    assert "saved" in out
    for path in skipped:
        assert f"ferrolab backup create: warning: {path}" in err or os.path.realpath(path) in err
    assert "could not be backed up" in err and "exit status 3" in err
    code = cli.main(["backup", "-r", str(tmp_path / "repo"), "create", "--json", str(src)])
    out, err = capsys.readouterr()
    assert code == 3 and len(json.loads(out)["warnings"]) == 2 and "fifo" in err
    assert cli.main(["backup", "-r", str(tmp_path / "repo"), "create", str(src / "ok.txt")]) == 0
    assert capsys.readouterr().err == ""


# --- snapshot objects that cannot be read -------------------------------------------------------------------------
class TwoVersions(NamedTuple):
    repo: Repository
    path: Any
    src: Any
    old: fl.backup.Snapshot
    new: fl.backup.Snapshot


@pytest.fixture
def newest_damaged(tmp_path) -> TwoVersions:
    """Two snapshots of one file (``version 1``, ``version 2``); a bit of the newest snapshot object is flipped."""
    src = tmp_path / "src"
    write(src / "doc.txt", b"version 1")
    repo = new_repo(tmp_path / "repo")
    old = repo.backup(src, time=1_700_000_000)
    write(src / "doc.txt", b"version 2")
    new = repo.backup(src, time=1_700_086_400)
    flip_byte(objects(tmp_path / "repo", "snapshots")[new.id], 40)
    return TwoVersions(repo, tmp_path / "repo", src, old, new)


def test_snapshots_reports_a_damaged_snapshot_object(newest_damaged: TwoVersions, caplog) -> None:
    d = newest_damaged
    with caplog.at_level("ERROR", logger="ferrolab.backup"), \
            pytest.warns(RuntimeWarning, match=f"snapshot {d.new.short_id} cannot be read"):
        snaps = d.repo.snapshots()
    assert [s.id for s in snaps] == [d.old.id]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and f"snapshots/{d.new.id} cannot be read" in errors[0], errors


def test_restore_latest_or_at_refuses_when_a_snapshot_is_damaged(newest_damaged: TwoVersions) -> None:
    """It used to restore the older snapshot (``version 1``) without a word."""
    d = newest_damaged
    out = d.path.parent / "out"
    with pytest.raises(fl.backup.CorruptionError, match=f"latest.*{d.new.short_id}.*explicit snapshot id"):
        d.repo.restore("latest", target=out)
    with pytest.raises(fl.backup.CorruptionError, match=f"{d.new.short_id}.*explicit snapshot id"):
        d.repo.restore(target=out, at="2024-01-01T00:00:00Z")
    for spec in (d.new.id, d.new.id[:6], d.new.id.upper()):
        with pytest.raises(fl.backup.CorruptionError, match=f"snapshot {d.new.short_id} cannot be read"):
            d.repo.restore(spec, target=out)
    assert not out.exists()
    with pytest.warns(RuntimeWarning, match=d.new.short_id):  # an explicit, readable one still restores
        d.repo.restore(d.old.id, target=out)
    assert list(out.rglob("doc.txt"))[0].read_bytes() == b"version 1"
    with pytest.raises(ValueError, match="no snapshot 'ffffffff'"):
        d.repo.restore("ffffffff", target=out)


def test_a_prefix_of_a_readable_and_a_damaged_snapshot_is_ambiguous() -> None:
    readable = [fl.backup.Snapshot("ab" + "0" * 62, datetime(2024, 5, 1, tzinfo=UTC))]
    damaged = [("ab00" + "1" * 60, "authentication failed")]
    with pytest.raises(ValueError, match=r"ambiguous \(2 snapshots: ab000000, ab001111 \(damaged\)\)"):
        fl.backup._select_snapshot("restore", readable, "ab00", damaged=damaged)
    assert fl.backup._select_snapshot("restore", readable, "ab000", damaged=damaged) == readable[0]
    with pytest.raises(fl.backup.CorruptionError, match="snapshot ab001111 cannot be read .authentication failed."):
        fl.backup._select_snapshot("restore", readable, "ab001", damaged=damaged)


def test_forget_reports_damaged_snapshots_and_leaves_them(newest_damaged: TwoVersions) -> None:
    d = newest_damaged
    with pytest.warns(RuntimeWarning, match=d.new.short_id):
        result = d.repo.forget(keep_last=1)
    assert [s.id for s in result.keep] == [d.old.id] and result.remove == []
    assert d.new.id in objects(d.path, "snapshots")


def test_the_commands_report_damaged_snapshots(newest_damaged: TwoVersions, capsys, monkeypatch) -> None:
    d = newest_damaged
    monkeypatch.setenv("FERROLAB_PASSWORD", PASSWORD)
    repo = ["backup", "-r", str(d.path)]
    assert cli.main([*repo, "list"]) == 1
    out, err = capsys.readouterr()
    assert d.old.short_id in out and d.new.short_id not in out
    assert f"snapshot {d.new.id} cannot be read" in err and "verify" in err
    assert cli.main([*repo, "list", "--json"]) == 1
    out, err = capsys.readouterr()
    assert [s["id"] for s in json.loads(out)] == [d.old.id] and d.new.id in err
    target = str(d.path.parent / "cli")
    assert cli.main([*repo, "restore", "--target", target]) == 1
    assert "CorruptionError" in capsys.readouterr().err
    assert cli.main([*repo, "restore", d.new.short_id, "--target", target]) == 1
    assert f"snapshot {d.new.short_id} cannot be read" in capsys.readouterr().err
    assert cli.main([*repo, "restore", d.old.short_id, "--target", target]) == 0
    assert d.new.id in capsys.readouterr().err
    assert cli.main([*repo, "forget", "--keep-last", "1", "--dry-run"]) == 0
    assert f"warning: ferrolab.backup: {d.path}: snapshot {d.new.short_id}" in capsys.readouterr().err


# --- argument errors found with a repository ----------------------------------------------------------------------
@pytest.fixture
def small_repo(tmp_path) -> Repository:
    write(tmp_path / "src" / "a", b"a")
    repo = new_repo(tmp_path / "repo")
    repo.backup(tmp_path / "src")
    return repo


def test_forget_names_itself_for_bad_tags_and_keep_within(small_repo: Repository) -> None:
    with pytest.raises(TypeError, match=r"forget\(\): argument 'tags'"):  # said snapshots()
        small_repo.forget(keep_last=1, tags=1)
    with pytest.raises(ValueError, match=r"forget\(\): argument 'keep_within'"):  # a bare OverflowError
        small_repo.forget(keep_within=1e300)


def test_restore_refuses_a_nul_in_the_target(small_repo: Repository, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"restore\(\): argument 'target' contains a NUL"):  # OSError errno 0
        small_repo.restore(target=str(tmp_path / "o\0x"))


def test_init_and_open_refuse_unsupported_schemes_and_nul(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("ftp://host/x", "http://host/x", "sftp://user@host/x"):
        with pytest.raises(ValueError, match=r"init\(\): argument 'url' has the unsupported scheme"):
            Repository.init(url, password=PASSWORD)
        with pytest.raises(ValueError, match=r"open\(\): argument 'url' has the unsupported scheme"):
            Repository.open(url, password=PASSWORD)
    assert os.listdir(tmp_path) == []  # init('ftp://host/x') made ./ftp:/host/x
    with pytest.raises(ValueError, match=r"init\(\): argument 'url' contains a NUL"):
        Repository.init(str(tmp_path / "r\0x"), password=PASSWORD)
    repo = Repository.init(f"FILE://{tmp_path / 'repo'}", password=PASSWORD)
    assert Repository.open(f"file://{tmp_path / 'repo'}", password=PASSWORD).id == repo.id


def test_open_on_a_regular_file_is_repository_not_found(tmp_path) -> None:
    (tmp_path / "plain-file").write_bytes(b"not a repository")
    below = tmp_path / "plain-file" / "sub"  # a folder on the path is a file
    for url in (tmp_path / "plain-file", f"file://{tmp_path}/plain-file", below, f"file://{below}/deeper"):
        with pytest.raises(fl.backup.RepositoryNotFound, match="not a directory"):  # was NotADirectoryError
            Repository.open(url, password=PASSWORD)
    assert (tmp_path / "plain-file").read_bytes() == b"not a repository"
