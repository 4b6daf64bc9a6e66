"""fl.backup against a real S3 server (SeaweedFS started on 127.0.0.1 by tests/seaweed.py)."""

from __future__ import annotations

import hashlib
import os
import pathlib

import ferrolab as fl
import numpy as np
import pytest
from seaweed import seaweedfs

pytestmark = pytest.mark.integration


def _tree(root: pathlib.Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def s3():
    with seaweedfs(bucket="ferrolab-backup") as info:
        yield info


def _opts(info: dict[str, str]) -> dict[str, str]:
    return {k: info[k] for k in ("endpoint", "region", "access_key_id", "secret_access_key")}


def test_s3_round_trip_incremental_verify_prune(s3, tmp_path):
    src = tmp_path / "data"
    (src / "sub").mkdir(parents=True)
    (src / "config.yml").write_text("threshold: 3\n")
    np.save(src / "sub" / "field.npy", np.sin(np.linspace(0, 50, 300_000)))
    (src / "sub" / "blob.bin").write_bytes(os.urandom(2_000_000))
    os.symlink("config.yml", src / "link")
    url = f"s3://{s3['bucket']}/repos/round-trip"
    repo = fl.backup.Repository.init(url, password="pw", s3=_opts(s3))
    first = repo.backup([src], tags=["s3"])
    assert first.files == 3 and first.added_bytes > 0
    with (src / "sub" / "blob.bin").open("r+b") as f:
        f.write(b"changed!")
    second = repo.backup([src])
    assert second.parent == first.id
    # One data chunk of the changed file (at most 512 KiB: the chunker's maximum, since the repository's gear table
    # is secret and random the cut points are too) plus a little metadata, not the whole 2 MB file.
    assert 0 < second.added_bytes < 512 * 1024 + 32 * 1024, second.added_bytes

    again = fl.backup.Repository.open(url, password="pw", s3=_opts(s3))
    assert [s.id for s in again.snapshots()] == [first.id, second.id]
    out = tmp_path / "out"
    again.restore(second.id, target=out)
    restored = out / str(src).lstrip("/")
    assert _tree(restored) == _tree(src)
    assert os.readlink(restored / "link") == "config.yml"
    report = again.verify()
    assert report.ok, str(report)

    again.forget(keep_last=1)
    again.prune()
    assert [s.id for s in again.snapshots()] == [second.id]
    assert again.verify().ok
    out2 = tmp_path / "out2"
    again.restore("latest", target=out2)
    assert _tree(out2 / str(src).lstrip("/")) == _tree(src)


def test_s3_wrong_password_missing_repo_and_credentials(s3, tmp_path):
    url = f"s3://{s3['bucket']}/repos/errors"
    fl.backup.Repository.init(url, password="right", s3=_opts(s3))
    with pytest.raises(fl.backup.WrongPassword):
        fl.backup.Repository.open(url, password="wrong", s3=_opts(s3))
    with pytest.raises(fl.backup.RepositoryNotFound):
        fl.backup.Repository.open(f"s3://{s3['bucket']}/repos/nothing-here", password="x", s3=_opts(s3))
    with pytest.raises(fl.backup.BackupError):
        fl.backup.Repository.init(url, password="again", s3=_opts(s3))  # already a repository there
    bad = dict(_opts(s3), secret_access_key="not-the-secret")
    with pytest.raises(OSError):
        fl.backup.Repository.open(url, password="right", s3=bad)
