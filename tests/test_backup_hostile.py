"""fl.backup against a hostile repository: an attacker who can read and write the repository directory, but has
no password or key file.

Whatever the attacker does, files outside the repository ("victims") must stay byte-for-byte intact, nothing that
the code cannot prove is its own is deleted, swapped or replayed objects are detected instead of being trusted,
hostile key parameters and special files cannot hang or exhaust the process, the repository is private (0600 files,
0700 directories), and a failed restore leaves no complete-looking file.

Commands that could hang (FIFOs, /dev/zero, huge Argon2 costs) or kill the process (huge allocations) run in a child
process with a timeout, so a hang is a failure instead of a stuck suite.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from typing import Any, NamedTuple

import ferrolab as fl
import pytest
from backup_helpers import PASSWORD, child_env, content_manifest, diff, flip_byte, objects, restored_root
from ferrolab import cli

Repository = fl.backup.Repository
TIMEOUT = 60  # seconds for a child process: a hang is a failure, not a stuck suite
TWO_HOURS_AGO = time.time() - 2 * 3600
#: address-space limit of the child processes that read hostile special files (a read of /dev/zero or of a 4 GiB
#: sparse file into memory must fail there instead of filling the machine's memory)
CHILD_MEMORY_LIMIT = 3 << 30

FOLDERS = ["index", "data", "data/xx", "snapshots", "keys", "locks", "tmp"]
COMMANDS = ["create", "list", "restore", "verify", "forget", "prune", "unlock", "open"]


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch):
    for var in ("FERROLAB_PASSWORD", "FERROLAB_PASSWORD_FILE", "FERROLAB_REPOSITORY"):
        monkeypatch.delenv(var, raising=False)


def write(path: Any, data: bytes, mtime: float | None = None) -> None:
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def hex_id(seed: int, prefix: str = "") -> str:
    """64 hex digits (an object name), starting with ``prefix``."""
    return (prefix + random.Random(seed).randbytes(32).hex())[:64]


# --- victims ------------------------------------------------------------------------------------------------------
class Victim:
    """A directory outside the repository whose files must survive every command byte for byte.

    It holds names that look like repository objects (64 hex digits), a name that looks like a ferrolab temp file,
    plain names, a subdirectory, and files whose mtime is two hours in the past (so that age-based cleanup of
    temp files would hit them).
    """

    def __init__(self, root: Any) -> None:
        self.path = root
        os.mkdir(root)
        write(root / "notes.txt", b"the victim's notes\n" * 200, TWO_HOURS_AGO)
        write(root / hex_id(1), rand(5000, 1), TWO_HOURS_AGO)
        write(root / hex_id(2, "ab"), rand(3000, 2))
        write(root / f"{os.getpid()}-0011223344556677.tmp", rand(700, 3), TWO_HOURS_AGO)
        write(root / "sub" / hex_id(4), rand(4096, 4), TWO_HOURS_AGO)
        write(root / "sub" / "deep.txt", b"deep\n", TWO_HOURS_AGO)
        self.file = root / "notes.txt"
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        """Every entry (the root as ``""``): kind, permission bits, and a file's bytes or a symlink's target."""
        out: dict[str, tuple[Any, ...]] = {}
        top = os.fspath(self.path)
        for dirpath, dirnames, filenames in os.walk(top):
            for name in ["", *dirnames, *filenames] if dirpath == top else [*dirnames, *filenames]:
                p = os.path.join(dirpath, name) if name else dirpath
                st = os.lstat(p)
                rel = os.path.relpath(p, top) if name else ""
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = ("symlink", os.readlink(p))
                elif stat.S_ISDIR(st.st_mode):
                    out[rel] = ("dir", stat.S_IMODE(st.st_mode))
                else:
                    with open(p, "rb") as f:
                        out[rel] = ("file", stat.S_IMODE(st.st_mode), f.read())
        return out

    def check(self, after: str) -> None:
        now = self.snapshot()
        if now != self.before:
            lines = []
            for k in sorted(set(now) | set(self.before)):
                old, new = self.before.get(k), now.get(k)
                if old != new:
                    lines.append(f"  {k!r}: {_short(old)} -> {_short(new)}")
            raise AssertionError(f"victim files changed after {after}:\n" + "\n".join(lines))


def _short(entry: tuple[Any, ...] | None) -> str:
    if entry is None:
        return "missing"
    if entry[0] == "file":
        return f"file mode {entry[1]:o}, {len(entry[2])} bytes"
    return repr(entry)


@pytest.fixture
def victim(tmp_path) -> Victim:
    return Victim(tmp_path / "victim")


# --- repositories -------------------------------------------------------------------------------------------------
class Template(NamedTuple):
    path: Any  # the repository
    src: Any  # what was backed up
    snaps: list[fl.backup.Snapshot]  # snapshot 0 is forgotten: prune has a pack to delete
    latest_pack: str  # the pack written by the newest backup


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Template:
    """A repository with two snapshots and the data of a forgotten third (so prune has work), copied per test."""
    base = tmp_path_factory.mktemp("hostile-template")
    src = base / "src"
    repo = Repository.init(base / "repo", password=PASSWORD)
    write(src / "x.bin", rand(60_000, 10))
    snaps = [repo.backup(src)]
    os.remove(src / "x.bin")
    write(src / "a.bin", rand(200_000, 11))
    write(src / "b.txt", b"b\n" * 3000)
    snaps.append(repo.backup(src))
    write(src / "c.bin", rand(100_000, 12))
    before = set(objects(base / "repo", "data"))
    snaps.append(repo.backup(src))
    (latest_pack,) = set(objects(base / "repo", "data")) - before
    repo.forget(keep_last=2)
    assert [s.id for s in repo.snapshots()] == [s.id for s in snaps[1:]]
    return Template(base / "repo", src, snaps, latest_pack)


def copy_repo(template: Template, tmp_path: Any) -> Any:
    dest = tmp_path / "repo"
    shutil.copytree(template.path, dest, symlinks=True)
    return dest


def folder_name(template: Template, folder: str) -> str:
    """``data/xx`` stands for the data subfolder that holds the newest backup's pack."""
    return f"data/{template.latest_pack[:2]}" if folder == "data/xx" else folder


def replace_with_symlink(repo: Any, rel: str, target: Any, tmp_path: Any) -> None:
    """Moves ``repo/rel`` out of the repository and puts a symlink to ``target`` in its place."""
    path = repo / rel
    shutil.move(path, tmp_path / ("moved-" + rel.replace("/", "-")))
    os.symlink(os.fspath(target), path)


def put_undecodable_pack(repo: Any, seed: int = 7) -> tuple[str, Any, bytes]:
    """Random bytes at ``data/ab/<64 hex>``: an object that no key decodes."""
    pack_id = hex_id(seed, "ab")
    data = rand(4096, seed)
    path = repo / "data" / "ab" / pack_id
    write(path, data)
    return pack_id, path, data


# --- child processes ----------------------------------------------------------------------------------------------
_OPEN_CHILD = r"""
import json, os, resource, sys
limit = int(os.environ.get("FL_TEST_MEMORY_LIMIT") or 0)
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import ferrolab as fl
try:
    repo = fl.backup.Repository.open(sys.argv[1], password=sys.argv[2])
    result = {"ok": True, "id": repo.id}
except BaseException as e:
    result = {"ok": False, "type": type(e).__name__, "message": str(e),
              "backup_error": isinstance(e, fl.backup.BackupError),
              "corruption": isinstance(e, fl.backup.CorruptionError)}
print(json.dumps(result))
"""


def run_child(argv: list[str], timeout: float = TIMEOUT, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs a child process to completion; a hang past ``timeout`` fails the test (the child is killed)."""
    start = time.monotonic()
    try:
        res = subprocess.run(argv, env=child_env(**env), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{argv[1:]} hung: still running after {timeout} s (killed)") from None
    res.elapsed = time.monotonic() - start  # type: ignore[attr-defined]
    return res


def run_cli(repo: Any, *args: Any, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``python -m ferrolab backup -r REPO ARGS...`` with the password in FERROLAB_PASSWORD."""
    return run_child([sys.executable, "-m", "ferrolab", "backup", "-r", os.fspath(repo), *map(os.fspath, args)],
                     timeout=timeout)


def open_in_child(repo: Any, password: str = PASSWORD, memory_limit: int | None = None) -> dict[str, Any]:
    """Opens the repository in a child process; returns ``{"ok": True, "id"}`` or the error it raised."""
    env = {"FL_TEST_MEMORY_LIMIT": str(memory_limit)} if memory_limit else {}
    res = run_child([sys.executable, "-c", _OPEN_CHILD, os.fspath(repo), password], **env)
    assert res.returncode == 0 and res.stdout.strip(), (
        f"the child that opens the repository died (status {res.returncode}): {res.stdout!r} {res.stderr[-2000:]!r}")
    result = json.loads(res.stdout.strip().splitlines()[-1])
    result["elapsed"] = res.elapsed  # type: ignore[attr-defined]
    return result


# --- 1. symlinked folders: refused, or used without touching what they point to --------------------------------
def run_command(command: str, repo: Any, template: Template, tmp_path: Any) -> tuple[str, str, str]:
    """Runs one command against ``repo``; returns ``(outcome, error type, message)`` where outcome is ``"ok"``,
    ``"report"`` (verify printed a report of damage) or ``"error"``."""
    if command == "open":
        result = open_in_child(repo)
        if result["ok"]:
            return "ok", "", ""
        return "error", result["type"], result["message"]
    args: list[Any] = {
        "create": ["create", template.src, "--no-progress"],
        "list": ["list"],
        "restore": ["restore", "latest", "--target", tmp_path / "out", "--no-progress"],
        "verify": ["verify", "--no-progress"],
        "forget": ["forget", "--keep-last", "1"],
        "prune": ["prune", "--no-progress"],
        "unlock": ["unlock"],
    }[command]
    res = run_cli(repo, *args)
    if res.returncode == 0:
        return "ok", "", ""
    if command == "verify" and res.returncode == 1 and res.stdout.startswith("repository damaged"):
        return "report", "", res.stdout
    prefix = "ferrolab backup: "
    line = next((ln for ln in res.stderr.splitlines() if ln.startswith(prefix)), "")
    kind, _, message = line[len(prefix):].partition(": ")
    return "error", kind if message else f"exit status {res.returncode}", message or res.stderr[-2000:]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("folder", [pytest.param(f, id=f.replace("/", "-")) for f in FOLDERS])
def test_a_folder_replaced_by_a_symlink_never_touches_its_target(template, victim, tmp_path, folder,
                                                                 command) -> None:
    """``index/``, ``data/``, a ``data/xx/`` subfolder, ``snapshots/``, ``keys/``, ``locks/`` or ``tmp/`` points to a
    victim directory: every command either refuses with CorruptionError naming the symlinked folder, or works
    without following the symlink; the victim directory is unchanged in every case."""
    repo = copy_repo(template, tmp_path)
    rel = folder_name(template, folder)
    replace_with_symlink(repo, rel, victim.path, tmp_path)
    outcome, kind, message = run_command(command, repo, template, tmp_path)
    victim.check(f"{command} with {rel}/ -> victim directory")
    if outcome == "error":
        assert kind == "CorruptionError", f"{command} failed with {kind}: {message}"
        assert rel in message and "symlink" in message.lower(), (
            f"{command}: the error does not name the symlinked folder {rel}/: {message}")


def test_prune_with_index_symlinked_to_a_victim_directory_deletes_nothing(template, victim, tmp_path) -> None:
    """Today's prune deletes every index object it cannot decode: through the symlink, every victim file."""
    repo = copy_repo(template, tmp_path)
    put_undecodable_pack(repo)
    replace_with_symlink(repo, "index", victim.path, tmp_path)
    res = run_cli(repo, "prune", "--no-progress")
    victim.check("prune with index/ -> victim directory")
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "CorruptionError" in res.stderr and "index" in res.stderr and "symlink" in res.stderr.lower(), res.stderr


def test_backup_with_tmp_symlinked_to_a_victim_directory_deletes_nothing(template, victim, tmp_path) -> None:
    """Today's backup removes files older than an hour from tmp/: through the symlink, the victim's old files."""
    repo = copy_repo(template, tmp_path)
    replace_with_symlink(repo, "tmp", victim.path, tmp_path)
    res = run_cli(repo, "create", template.src, "--no-progress")
    victim.check("backup create with tmp/ -> victim directory")
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "CorruptionError" in res.stderr and "tmp" in res.stderr, res.stderr


# --- 2. nothing is deleted that the code cannot prove is its own --------------------------------------------------
def test_an_undecodable_object_in_data_survives_prune_and_is_reported(template, tmp_path) -> None:
    path = copy_repo(template, tmp_path)
    pack_id, pack_path, data = put_undecodable_pack(path)
    repo = Repository.open(path, password=PASSWORD)
    try:
        repo.prune()
    except fl.backup.CorruptionError:
        pass  # refusing is fine too: deleting is not
    assert pack_path.exists(), "prune deleted an object it cannot read"
    assert pack_path.read_bytes() == data
    report = repo.verify()
    assert not report.ok
    assert any(pack_id in e.item for e in report.errors), str(report)
    assert pack_path.read_bytes() == data


def test_stray_files_in_tmp_survive_a_backup(template, tmp_path) -> None:
    path = copy_repo(template, tmp_path)
    strays = {"notes.txt": b"not a ferrolab temp file\n", "keep-me": rand(2000, 5), "x.tmp": rand(100, 6)}
    for name, data in strays.items():
        write(path / "tmp" / name, data, TWO_HOURS_AGO)
    repo = Repository.open(path, password=PASSWORD)
    write(tmp_path / "more" / "new.bin", rand(50_000, 8))
    repo.backup([template.src, tmp_path / "more"])
    for name, data in strays.items():
        assert (path / "tmp" / name).exists(), f"backup deleted tmp/{name}"
        assert (path / "tmp" / name).read_bytes() == data


# --- 3. object identity is authenticated --------------------------------------------------------------------------
class Two(NamedTuple):
    repo: Repository
    path: Any
    snaps: list[fl.backup.Snapshot]
    manifests: list[dict[bytes, Any]]
    packs: list[str]  # the pack each backup wrote
    indexes: list[str]  # the index object each backup wrote


@pytest.fixture
def two(tmp_path) -> Two:
    """Two snapshots of different content, each backup writing exactly one pack and one index object."""
    src = tmp_path / "src"
    repo = Repository.init(tmp_path / "repo", password=PASSWORD)
    snaps, manifests, packs, indexes = [], [], [], []
    for k in range(2):
        write(src / "data.bin", rand(150_000 + 1000 * k, 20 + k))
        write(src / f"only-in-{k}.txt", f"backup {k}\n".encode() * 50)
        before_p, before_i = set(objects(tmp_path / "repo", "data")), set(objects(tmp_path / "repo", "index"))
        snaps.append(repo.backup(src, time=1_700_000_000 + 3600 * k))
        (pack,) = set(objects(tmp_path / "repo", "data")) - before_p
        (index,) = set(objects(tmp_path / "repo", "index")) - before_i
        packs.append(pack)
        indexes.append(index)
        manifests.append(content_manifest(src))
    assert manifests[0] != manifests[1]
    return Two(repo, tmp_path / "repo", snaps, manifests, packs, indexes)


def restores_exactly_or_refuses(two: Two, k: int, target: Any) -> None:
    """Restoring snapshot ``k`` raises CorruptionError or gives back exactly its files (never other data)."""
    try:
        two.repo.restore(two.snaps[k], target=target)
    except fl.backup.CorruptionError:
        return
    got = content_manifest(restored_root(target, two.snaps[k].paths[0]))
    assert got == two.manifests[k], diff(two.manifests[k], got)


def test_swapped_snapshot_objects_are_detected(two: Two, tmp_path) -> None:
    a, b = (objects(two.path, "snapshots")[s.id] for s in two.snaps)
    with open(a, "rb") as f:
        data_a = f.read()
    with open(b, "rb") as f:
        data_b = f.read()
    write(a, data_b)
    write(b, data_a)
    for k, snap in enumerate(two.snaps):
        with pytest.raises(fl.backup.CorruptionError):
            two.repo.restore(snap, target=tmp_path / f"out{k}")  # today: the other snapshot's files
    report = two.repo.verify()
    assert not report.ok
    for snap in two.snaps:
        assert any(snap.id in e.item for e in report.errors), (snap.id, str(report))


def test_an_old_snapshot_replayed_under_a_newer_name_is_detected(two: Two, tmp_path) -> None:
    old, new = two.snaps
    shutil.copyfile(objects(two.path, "snapshots")[old.id], objects(two.path, "snapshots")[new.id])
    with pytest.raises(fl.backup.CorruptionError):
        two.repo.restore(new, target=tmp_path / "new")  # today: the old snapshot's files
    report = two.repo.verify()
    assert not report.ok
    assert any(new.id in e.item for e in report.errors), str(report)
    # the old snapshot itself is intact
    two.repo.restore(old, target=tmp_path / "old")
    got = content_manifest(restored_root(tmp_path / "old", old.paths[0]))
    assert got == two.manifests[0], diff(two.manifests[0], got)


@pytest.mark.parametrize("how", ["swap", "replay"])
def test_swapped_or_replayed_index_objects_are_detected(two: Two, tmp_path, how: str) -> None:
    a, b = (objects(two.path, "index")[i] for i in two.indexes)
    with open(a, "rb") as f:
        data_a = f.read()
    with open(b, "rb") as f:
        data_b = f.read()
    if how == "swap":
        write(a, data_b)
        write(b, data_a)
        named = two.indexes
    else:  # the first index object copied over the second
        write(b, data_a)
        named = two.indexes[1:]
    report = two.repo.verify()
    assert not report.ok, str(report)
    for index_id in named:
        assert any(index_id in e.item for e in report.errors), (index_id, str(report))
    for k in range(2):
        restores_exactly_or_refuses(two, k, tmp_path / f"out{k}")


@pytest.mark.parametrize("index", ["kept", "removed"])
def test_a_pack_header_moved_onto_another_pack_is_detected(two: Two, tmp_path, index: str) -> None:
    """Pack A's trailer (sealed header + its u32-le length) on pack B's blob area, written under B's name."""
    a, b = (objects(two.path, "data")[p] for p in two.packs)
    with open(a, "rb") as f:
        data_a = f.read()
    with open(b, "rb") as f:
        data_b = f.read()
    trailer_a = data_a[-4 - int.from_bytes(data_a[-4:], "little"):]
    blobs_b = data_b[:-4 - int.from_bytes(data_b[-4:], "little")]
    write(b, blobs_b + trailer_a)
    if index == "removed":  # the packs must be read from their headers
        for p in objects(two.path, "index").values():
            os.remove(p)
    report = two.repo.verify(read_data=True)
    assert not report.ok
    assert any(two.packs[1] in e.item for e in report.errors), str(report)
    for k in range(2):
        restores_exactly_or_refuses(two, k, tmp_path / f"out{k}")


# --- 4. verify(expect_latest=ID): rollback of the newest snapshot -------------------------------------------------
def test_verify_expect_latest_accepts_the_newest_snapshot_and_detects_a_rollback(two: Two) -> None:
    old, new = two.snaps
    report = two.repo.verify(expect_latest=new.id)
    assert report.ok, str(report)
    assert two.repo.verify(read_data=False, expect_latest=new.id).ok
    # the newest snapshot object is deleted: the repository rolled back to the older one
    os.remove(objects(two.path, "snapshots")[new.id])
    report = two.repo.verify(expect_latest=new.id)
    assert not report.ok
    assert any(new.id in e.item or new.id in e.message for e in report.errors), str(report)
    assert two.repo.verify(expect_latest=old.id).ok


def test_verify_expect_latest_names_a_snapshot_that_never_existed(two: Two) -> None:
    ghost = hex_id(99)
    report = two.repo.verify(read_data=False, expect_latest=ghost)
    assert not report.ok
    assert any(ghost in e.item or ghost in e.message for e in report.errors), str(report)


def test_verify_expect_latest_checks_its_argument(two: Two) -> None:
    assert two.repo.verify(read_data=False, expect_latest=two.snaps[1].id).ok
    for bad in (123, b"ab" * 32, ["ab" * 32]):
        with pytest.raises(TypeError, match="expect_latest"):
            two.repo.verify(expect_latest=bad)
    for bad in ("", "latest", two.snaps[1].id[:8], two.snaps[1].id + "0", "g" * 64):
        with pytest.raises(ValueError, match="expect_latest"):
            two.repo.verify(expect_latest=bad)


def test_verify_expect_latest_by_the_command(two: Two, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FERROLAB_PASSWORD", PASSWORD)
    new = two.snaps[1]
    argv = ["backup", "-r", str(two.path), "verify", "--no-progress", "--expect-latest", new.id]
    assert cli.main(argv) == 0, capsys.readouterr()
    assert capsys.readouterr().out.startswith("repository ok")
    os.remove(objects(two.path, "snapshots")[new.id])
    assert cli.main(argv) == 1
    assert new.id in capsys.readouterr().out


# --- 5. hostile key objects and config --------------------------------------------------------------------------
@pytest.mark.parametrize("param, value", [("m_cost_kib", 2**31 - 1), ("t_cost", 10**9), ("p_cost", 0)])
def test_a_rogue_key_object_cannot_hang_or_break_open(template, tmp_path, param: str, value: int) -> None:
    path = copy_repo(template, tmp_path)
    (real,) = objects(path, "keys").values()
    with open(real, "rb") as f:
        key = json.load(f)
    assert param in key, key
    key[param] = value
    rogue = "00" * 32  # sorts first: tried before the real key
    write(path / "keys" / rogue, json.dumps(key).encode())

    good = open_in_child(path)
    assert good["ok"], good
    assert good["elapsed"] < 30, good

    bad = open_in_child(path, password=PASSWORD + " but wrong")
    assert not bad["ok"] and bad["backup_error"] and bad["corruption"], bad
    assert rogue in bad["message"], bad
    assert "out of range" in bad["message"].lower(), bad


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "victim-file", "sparse-4gib"])
def test_a_hostile_config_fails_quickly(template, victim, tmp_path, kind: str) -> None:
    path = copy_repo(template, tmp_path)
    config = path / "config"
    os.remove(config)
    if kind == "fifo":
        os.mkfifo(config)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", config)
    elif kind == "victim-file":
        os.symlink(victim.file, config)
    else:
        with open(config, "wb") as f:
            f.truncate(4 << 30)
    result = open_in_child(path, memory_limit=CHILD_MEMORY_LIMIT)
    victim.check(f"open with config -> {kind}")
    assert not result["ok"], result
    assert result["backup_error"], result  # not MemoryError or OSError
    assert result["elapsed"] < 30, result


# --- 6. permissions -----------------------------------------------------------------------------------------------
def modes(root: Any) -> dict[str, tuple[str, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames] if dirpath == os.fspath(root) else [*dirnames, *filenames]:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
            out[os.path.relpath(p, root)] = (kind, stat.S_IMODE(st.st_mode))
    return out


def assert_private(root: Any, after: str) -> None:
    wrong = {p: f"{k} {m:o}" for p, (k, m) in modes(root).items()
             if (k, m) not in (("dir", 0o700), ("file", 0o600))}
    assert not wrong, f"after {after}, not 0700 directories / 0600 files: {wrong}"


def test_the_repository_is_private_whatever_the_umask(tmp_path) -> None:
    src = tmp_path / "src"
    write(src / "a.bin", rand(300_000, 30))
    write(src / "b.txt", b"b\n" * 100)
    old_umask = os.umask(0o022)
    try:
        repo = Repository.init(tmp_path / "repo", password=PASSWORD)
        assert_private(tmp_path / "repo", "init")
        lock_modes: list[tuple[str, int]] = []

        def look(info: dict[str, Any]) -> None:
            for name, p in objects(tmp_path / "repo", "locks").items():
                lock_modes.append((name, stat.S_IMODE(os.lstat(p).st_mode)))

        first = repo.backup(src, progress=look)
        assert lock_modes, "no lock seen during the backup"
        assert all(m == 0o600 for _, m in lock_modes), [(n[:12], f"{m:o}") for n, m in lock_modes]
        assert_private(tmp_path / "repo", "a backup")
        os.remove(src / "a.bin")
        repo.backup(src)
        repo.forget(keep_last=1)
        assert repo.forget(keep_last=1).remove == []
        stats = repo.prune()
        assert stats["packs_deleted"] + stats["packs_rewritten"] >= 1, stats
        assert_private(tmp_path / "repo", "forget and prune")
        assert first.id not in {s.id for s in repo.snapshots()}
    finally:
        os.umask(old_umask)


# --- 7. truncated packs, failed restores --------------------------------------------------------------------------
def test_verify_without_reading_data_finds_a_truncated_pack(two: Two) -> None:
    pack_id = two.packs[0]
    path = objects(two.path, "data")[pack_id]
    os.truncate(path, os.path.getsize(path) - 100)
    report = two.repo.verify(read_data=False)
    assert not report.ok
    named = [e for e in report.errors if pack_id in e.item]
    assert named, str(report)
    assert any("size" in e.message.lower() for e in named), str(report)


def test_a_failed_restore_leaves_no_complete_looking_file(tmp_path) -> None:
    src = tmp_path / "src"
    write(src / "big.bin", rand(1 << 20, 40))
    repo = Repository.init(tmp_path / "repo", password=PASSWORD)
    snap = repo.backup(src)
    (pack,) = objects(tmp_path / "repo", "data").values()
    flip_byte(pack, 30)  # inside the first blob: the first chunk of big.bin
    target = tmp_path / "out"
    with pytest.raises(fl.backup.CorruptionError, match="big.bin"):
        repo.restore(snap, target=target)
    final = os.path.join(restored_root(target, snap.paths[0]), "big.bin")
    assert not os.path.lexists(final), f"{final} exists after the failed restore ({os.path.getsize(final)} bytes)"
    leftovers = [os.path.join(d, n) for d, dirs, files in os.walk(target) for n in dirs + files
                 if n.startswith(".fl-")]
    assert leftovers == []
