"""Crash safety of ``ferrolab backup create``: SIGKILL at random moments never damages the repository.

A data tree of ~45 MB (400 small files and three large ones) is backed up, twice (the second run is timed); then 20
times a backup is started as a separate process (``python -m ferrolab backup create``) and killed with SIGKILL after
a seeded random delay spread over a backup's duration (from the very start of the process, through the moment it
takes its lock and writes packs, to its end), with files changed between runs (three more runs are left to
finish). After every kill the repository verifies (packs left by killed runs are not errors) and no stale lock
blocks verify or the next backup; after a few kills and at the end, every snapshot restores bit-exact (compared with
the tree as it was when that snapshot's run started). Finally a run is killed right after it wrote a pack, the rerun
does not store that data again, and a stale lock does not block prune.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from typing import Any

import ferrolab as fl
import pytest
from backup_helpers import PASSWORD, cli, content_manifest, diff, kill, objects, restored_root

MiB = 1 << 20
SMALL_DIRS, SMALL_FILES = 20, 20  # file creation is slow on some disks: restores of many tiny files dominate
LARGE = 3
LARGE_SIZE = 12 * MiB
KILLS = 20
COMPLETE = (5, 10, 15)  # these runs are not killed: more snapshots to check, and less changed data per run
CHECK_AT = (8, 16)  # every snapshot is restored after these runs and at the end

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch):
    for var in ("FERROLAB_PASSWORD", "FERROLAB_PASSWORD_FILE", "FERROLAB_REPOSITORY"):
        monkeypatch.delenv(var, raising=False)


def small(rnd: random.Random) -> bytes:
    n = rnd.randrange(0, 40_000)
    half = rnd.randrange(n + 1)
    return rnd.randbytes(half) + bytes([rnd.randrange(256)]) * (n - half)


def make_tree(data: Any, rnd: random.Random) -> None:
    for d in range(SMALL_DIRS):
        os.makedirs(data / f"d{d:02}")
        for i in range(SMALL_FILES):
            (data / f"d{d:02}" / f"f{i:03}.txt").write_bytes(small(rnd))
    for k in range(LARGE):
        (data / f"large{k}.bin").write_bytes(rnd.randbytes(LARGE_SIZE))


def change(data: Any, rnd: random.Random, step: int, large: int = 1) -> None:
    """Rewrites ``large`` large files, changes ten small ones, adds one and sometimes deletes one."""
    for j in range(large):
        (data / f"large{(step + j) % LARGE}.bin").write_bytes(rnd.randbytes(LARGE_SIZE))
    smalls = sorted(p for p in data.glob("d*/*.txt"))
    for p in rnd.sample(smalls, 10):
        p.write_bytes(small(rnd))
    (data / "new").mkdir(exist_ok=True)
    (data / "new" / f"n{step}.txt").write_bytes(small(rnd))
    if step % 4 == 0:
        rnd.choice(smalls).unlink()


class Run:
    """One ``ferrolab backup create`` process, with the moments at which it held a lock and wrote a pack."""

    def __init__(self, repo: Any, data: Any) -> None:
        self.repo = repo
        self.packs_before = set(objects(repo, "data"))
        self.start = time.monotonic()
        self.proc = cli("-r", repo, "create", data, "--no-progress", "--json")
        self.locked_at: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def poll(self) -> bool:
        """True while running; notes when a lock first appears."""
        if self.locked_at is None and os.listdir(self.repo / "locks"):
            self.locked_at = self.elapsed()
        return self.proc.poll() is None

    def new_packs(self) -> set[str]:
        return set(objects(self.repo, "data")) - self.packs_before

    def finish(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err.decode()
        return json.loads(out)


def test_sigkill_at_random_moments_never_damages_the_repository(tmp_path) -> None:
    rnd = random.Random(20240501)
    data = tmp_path / "data"
    repo_path = tmp_path / "repo"
    make_tree(data, rnd)
    repo = fl.backup.Repository.init(repo_path, password=PASSWORD)
    manifests: dict[str, dict[bytes, Any]] = {}  # snapshot id -> the tree when its run started
    root = os.path.realpath(data)

    def completed(run: Run, manifest: dict[bytes, Any]) -> str:
        snap = run.finish()
        manifests[snap["id"]] = manifest
        return snap["id"]

    def check_snapshots(label: str) -> None:
        """Every snapshot restores bit-exact."""
        assert {s.id for s in repo.snapshots()} == set(manifests), label
        for sid, want in manifests.items():
            target = tmp_path / "restore"
            repo.restore(sid, target=target)
            got = content_manifest(restored_root(target, root))
            assert got == want, f"{label}: snapshot {sid[:8]}:\n{diff(want, got)}"
            shutil.rmtree(target)

    # a first backup of everything, then a typical one (one large file and a few small ones changed), timed:
    # when the process takes its lock and when it ends
    manifest = content_manifest(data)
    first = Run(repo_path, data)
    while first.poll():
        time.sleep(0.001)
    completed(first, manifest)
    change(data, rnd, 0)
    manifest = content_manifest(data)
    typical = Run(repo_path, data)
    while typical.poll():
        time.sleep(0.001)
    t_end = typical.elapsed()
    t_lock = typical.locked_at if typical.locked_at is not None else t_end / 2
    completed(typical, manifest)

    # delays: very early (before the lock), around the lock, spread over the work, near and after the end
    delays = [0.0, 0.002, t_lock * 0.5, t_lock, t_end * 0.97, t_end * 1.02]
    delays += [rnd.uniform(t_lock, t_end) for _ in range(KILLS - len(delays) - 2)]
    delays += [rnd.uniform(0, t_end * 1.1) for _ in range(2)]
    rnd.shuffle(delays)
    schedule: list[float | None] = list(delays)
    for n in COMPLETE:
        schedule.insert(n - 1, None)
    # The delays follow the machine's speed: on a loaded machine a run can take much less (or more) time than the
    # typical one did, and a run that finishes before its kill proves nothing. Every run that finishes (the COMPLETE
    # ones, and any that beat its kill) rescales the delays of the later runs to its own duration.
    scale = 1.0

    killed = 0
    killed_with_lock = 0
    for n, delay in enumerate(schedule, start=1):
        change(data, rnd, n, large=1 + n % 2)  # 12 or 24 MiB of new data: some killed runs have written a pack
        manifest = content_manifest(data)
        known = {s.id for s in repo.snapshots()}
        run = Run(repo_path, data)
        if delay is None:
            completed(run, manifest)
            scale = run.elapsed() / t_end
            continue
        kill_at = delay * scale
        deadline = run.start + kill_at
        while run.poll() and time.monotonic() < deadline:
            time.sleep(0.0005)
        if run.proc.poll() is not None:  # it finished before its kill
            scale = run.elapsed() / t_end
        code = kill(run.proc)
        if code == -9:
            killed += 1
            killed_with_lock += bool(os.listdir(repo_path / "locks"))
        else:
            assert code == 0, f"run {n}: exit status {code}"
        new = {s.id for s in repo.snapshots()} - known
        assert len(new) <= 1
        for sid in new:  # finished (maybe killed after writing its snapshot)
            manifests[sid] = manifest

        # the repository is intact; packs of killed runs are not errors; stale locks block nothing. Without
        # read_data, verify checks every index, snapshot and tree and the headers of packs that no index lists; it
        # reads all data when this run wrote packs (the only objects whose contents it would not otherwise read)
        report = repo.verify(read_data=bool(run.new_packs()) or n in CHECK_AT)
        assert report.ok, f"run {n} killed after {kill_at:.3f} s: {report}"
        if n in CHECK_AT:
            check_snapshots(f"run {n}")

    assert killed >= KILLS // 2, f"only {killed} of {KILLS} runs were still running when killed"
    assert killed_with_lock >= 1, "no run was killed while it held its lock"

    # a run killed right after it stored a pack: the rerun does not store that data again
    for attempt in range(3):
        last = max(repo.snapshots(), key=lambda s: s.time)
        since = manifests[last.id]
        change(data, rnd, 100 + attempt, large=2)  # 24 MiB of new data: at least one full pack
        manifest = content_manifest(data)
        run = Run(repo_path, data)
        while run.poll() and not run.new_packs():
            time.sleep(0.0005)
        packs = run.new_packs()
        code = kill(run.proc)
        new = {s.id for s in repo.snapshots()} - set(manifests)
        for sid in new:  # it finished after all
            manifests[sid] = manifest
        if code == -9 and packs and not new:
            break
    else:
        pytest.fail("no run could be killed after writing a pack")
    stored = sum(os.path.getsize(objects(repo_path, "data")[p]) for p in packs)
    assert stored > 8 * MiB
    assert os.listdir(repo_path / "locks"), "the killed run's lock is left behind"
    changed = sum(v[1] for k, v in manifest.items() if v[0] == "file" and since.get(k) != v)
    report = repo.verify()  # reads the killed run's pack too: not an error
    assert report.ok, str(report)

    rerun = Run(repo_path, data)
    snap = rerun.finish()
    manifests[snap["id"]] = manifest
    assert snap["parent"] == last.id
    # what the rerun added is (at most) what had changed minus what the killed run had stored
    assert snap["added_bytes"] <= changed - stored + MiB, (snap["added_bytes"], changed, stored)
    assert snap["added_bytes"] < changed - 8 * MiB

    # a stale lock (a run killed while it held it) blocks neither prune nor the next backup
    run = Run(repo_path, data)
    while run.poll() and not os.listdir(repo_path / "locks"):
        time.sleep(0.0005)
    if kill(run.proc) == 0:
        sid = ({s.id for s in repo.snapshots()} - set(manifests)).pop()
        manifests[sid] = manifest
    repo.prune()
    assert os.listdir(repo_path / "locks") == []
    report = repo.verify()
    assert report.ok, str(report)
    check_snapshots("after prune")
