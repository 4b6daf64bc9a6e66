"""Memory of backup and restore is bounded by the index, not by the size of the files: a 2 GiB file (sparse: it
reads as zeros) and a 64 MiB random one go through a backup and a restore, each in its own process, whose peak RSS
is measured with ``os.wait4``."""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import ferrolab as fl
import pytest
from backup_helpers import PASSWORD, file_digest, restored_root, spawn

MiB = 1 << 20
GiB = 1 << 30
SPARSE = 2 * GiB
RANDOM = 64 * MiB
PEAK_LIMIT = 200 * MiB

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS units and VmHWM: Linux")


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch):
    for var in ("FERROLAB_PASSWORD", "FERROLAB_PASSWORD_FILE", "FERROLAB_REPOSITORY"):
        monkeypatch.delenv(var, raising=False)


def measured(*args: object) -> tuple[dict[str, Any], int, int]:
    """Runs ``backup_helpers.py big ARGS`` under a small measuring process: (its result, peak RSS from wait4, peak
    RSS from the child's own VmHWM)."""
    launcher = spawn("measure", "big", *map(str, args))
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["status"] == 0, report["stderr"]
    result = json.loads(report["stdout"])
    return result, int(report["maxrss"]), int(result.pop("vm_hwm"))


def all_zeros(path: object, size: int) -> bool:
    zeros = bytes(4 * MiB)
    seen = 0
    with open(path, "rb") as f:  # type: ignore[call-overload]
        while block := f.read(len(zeros)):
            if block != zeros[: len(block)]:
                return False
            seen += len(block)
    return seen == size


@pytest.mark.slow
def test_backup_and_restore_of_a_2_gib_file_stay_within_200_mib(tmp_path) -> None:
    free = shutil.disk_usage(tmp_path).free
    if free < 6 * GiB:
        pytest.skip(f"needs 6 GiB of free disk space for a 2 GiB restore, {free / GiB:.1f} GiB free")
    data = tmp_path / "data"
    data.mkdir()
    sparse = data / "sparse.bin"
    with open(sparse, "wb") as f:
        f.truncate(SPARSE)
    random_file = data / "random.bin"
    random_file.write_bytes(os.urandom(RANDOM))
    fl.backup.Repository.init(tmp_path / "repo", password=PASSWORD)
    target = tmp_path / "out"
    try:
        snap, peak, hwm = measured("backup", tmp_path / "repo", data)
        assert snap["bytes"] == SPARSE + RANDOM
        # zeros deduplicate to one chunk: what is stored is the random file
        assert RANDOM < snap["added_bytes"] < RANDOM + 2 * MiB
        assert peak < PEAK_LIMIT, f"backup: peak RSS {peak / MiB:.0f} MiB"
        assert hwm < PEAK_LIMIT, f"backup: VmHWM {hwm / MiB:.0f} MiB"

        counts, peak, hwm = measured("restore", tmp_path / "repo", data, target)
        assert counts == {"files": 2, "dirs": 1, "symlinks": 0, "bytes": SPARSE + RANDOM}
        assert peak < PEAK_LIMIT, f"restore: peak RSS {peak / MiB:.0f} MiB"
        assert hwm < PEAK_LIMIT, f"restore: VmHWM {hwm / MiB:.0f} MiB"

        where = restored_root(target, os.path.realpath(data))
        assert file_digest(os.path.join(where, "random.bin")) == file_digest(random_file)
        restored = os.path.join(where, "sparse.bin")
        assert os.path.getsize(restored) == SPARSE
        assert all_zeros(restored, SPARSE)  # the sparse original reads as zeros
    finally:
        # tmp_path is kept after the run: do not leave gigabytes behind
        shutil.rmtree(target, ignore_errors=True)
        sparse.unlink()
