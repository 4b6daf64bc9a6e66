"""Which paths a backup stores and a restore writes: overlapping roots, the root directory, exclude patterns."""

from __future__ import annotations

from pathlib import Path

import ferrolab as fl
import pytest


def _tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "deep" / "sub").mkdir(parents=True)
    (root / "top.txt").write_text("top")
    (root / "sub" / "x.txt").write_text("x")
    (root / "sub" / "y.log").write_text("y")
    (root / "sub" / "deeper" / "z.txt").write_text("z")
    (root / "deep" / "sub" / "w.txt").write_text("w")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def repo(tmp_path: Path) -> fl.backup.Repository:
    return fl.backup.Repository.init(tmp_path / "repo", password="pw")


def test_overlapping_paths_are_stored_once_and_restore(tmp_path: Path, repo: fl.backup.Repository) -> None:
    # like `restic backup /data /data/sub`: the inner path is covered by the outer one (before, everything below
    # it was stored twice and restore refused the snapshot as damaged, while verify passed)
    data = tmp_path / "data"
    _tree(data)
    snap = repo.backup([data / "sub", data, data / "sub" / "deeper"])
    assert snap.files == 5
    assert snap.paths == (str(data),)
    assert repo.verify().ok
    out = tmp_path / "out"
    repo.restore(snap, target=out)
    assert _files(out / data.relative_to("/")) == _files(data)


def test_include_slash_restores_everything(tmp_path: Path, repo: fl.backup.Repository) -> None:
    data = tmp_path / "data"
    _tree(data)
    snap = repo.backup(data)
    counts = repo.restore(snap, target=tmp_path / "out", include="/")
    assert counts["files"] == 5
    assert _files(tmp_path / "out" / data.relative_to("/")) == _files(data)


def test_a_backup_of_the_root_directory_restores(tmp_path: Path, repo: fl.backup.Repository) -> None:
    # the root directory of a backup of "/" is the restore target itself (before: "refusing item an empty path");
    # the exclude keeps the test small: everything below / is left out
    snap = repo.backup("/", exclude=["/*"])
    assert snap.paths == ("/",) and snap.dirs == 1
    assert repo.verify().ok
    counts = repo.restore(snap, target=tmp_path / "out")
    assert counts == {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
    # include "/" is the whole snapshot, here just its root directory (not "matches nothing")
    assert repo.restore(snap, target=tmp_path / "again", include="/") == counts


def test_an_inner_path_the_outer_walk_excludes_is_still_stored(tmp_path: Path, repo: fl.backup.Repository) -> None:
    # a path given explicitly is not dropped by the other path's exclude patterns
    data = tmp_path / "data"
    _tree(data)
    snap = repo.backup([data, data / "sub"], exclude="sub")
    out = tmp_path / "out"
    repo.restore(snap, target=out)
    restored = set(_files(out / data.relative_to("/")))
    assert restored == {"top.txt", "sub/x.txt", "sub/y.log", "sub/deeper/z.txt"}


@pytest.mark.parametrize(
    ("pattern", "left_out"),
    [
        ("sub/*.txt", ["deep/sub/w.txt", "sub/x.txt"]),  # relative with a slash: at any depth, as in restic
        # any depth: 'sub/deeper' is excluded as a directory, with what is in it
        ("*/sub/*", ["deep/sub/w.txt", "sub/deeper/z.txt", "sub/x.txt", "sub/y.log"]),
        ("ata/sub/*.txt", []),  # whole components only: 'ata' is not a component of '/…/data'
        ("**/sub/*.txt", ["deep/sub/w.txt", "sub/x.txt"]),
        ("*.log", ["sub/y.log"]),
        ("deeper", ["sub/deeper/z.txt"]),
        ("sub/deeper/", ["sub/deeper/z.txt"]),  # cleaned as restic cleans patterns
        ("./deeper", ["sub/deeper/z.txt"]),
    ],
)
def test_exclude_patterns_match_like_restic(
    tmp_path: Path, repo: fl.backup.Repository, pattern: str, left_out: list[str]
) -> None:
    data = tmp_path / "data"
    _tree(data)
    snap = repo.backup(data, exclude=pattern)
    out = tmp_path / "out"
    repo.restore(snap, target=out)
    restored = set(_files(out / data.relative_to("/")))
    assert set(_files(data)) - restored == set(left_out), pattern


def test_exclude_with_many_stars_finishes(tmp_path: Path, repo: fl.backup.Repository) -> None:
    # the old matcher backtracked exponentially in the stars (6 stars against a 100-byte name ran for minutes)
    data = tmp_path / "data"
    data.mkdir()
    (data / ("a" * 200)).write_text("x")
    snap = repo.backup(data, exclude="*a*a*a*a*a*a*a*a*a*a*b")
    assert snap.files == 1
