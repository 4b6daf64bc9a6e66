"""fl.backup without a repository: argument checks, password sources, snapshot selection, include paths, the
result types, progress reporting and the backup series."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from datetime import UTC, date, datetime, timedelta, timezone

import ferrolab as fl
import pytest
from ferrolab import backup as B
from ferrolab.backup import Repository, Snapshot, VerifyError, VerifyReport


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch):
    monkeypatch.delenv("FERROLAB_PASSWORD", raising=False)
    monkeypatch.delenv("FERROLAB_PASSWORD_FILE", raising=False)


def snap(sid: str, t: datetime, paths=("/srv/data",), tags=()) -> Snapshot:
    return Snapshot(sid, t, tuple(paths), tuple(tags), "box")


# --- passwords and key files -----------------------------------------------------------------------------------
def test_password_str_is_utf8_and_bytes_pass_through() -> None:
    assert B._credentials("init", "pässwörd", None) == ("pässwörd".encode(), None)
    assert B._credentials("open", b"\x00\xff", None) == (b"\x00\xff", None)
    assert B._credentials("open", bytearray(b"ab"), None) == (b"ab", None)


def test_key_file_bytes_are_read(tmp_path) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"\x01\x02\n\x03")
    assert B._credentials("init", None, key) == (None, b"\x01\x02\n\x03")
    assert B._credentials("init", None, str(key)) == (None, b"\x01\x02\n\x03")
    with pytest.raises(FileNotFoundError):
        B._credentials("init", None, tmp_path / "missing")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match=r"init\(\): argument 'key_file'.*empty"):
        B._credentials("init", None, tmp_path / "empty")
    with pytest.raises(TypeError, match="key_file"):
        B._credentials("init", None, b"raw key bytes are not a path")


def test_password_and_key_file_together_or_neither(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"open\(\): .*'password'.*'key_file'.*not both"):
        B._credentials("open", "pw", tmp_path)
    with pytest.raises(ValueError, match=r"init\(\): argument 'password' or 'key_file' is required.*FERROLAB_PASSWORD"):
        B._credentials("init", None, None)
    with pytest.raises(ValueError, match="'password' is empty"):
        B._credentials("init", "", None)
    with pytest.raises(TypeError, match="'password' must be a str or bytes, got int"):
        B._credentials("init", 1234, None)


def test_password_from_the_environment(tmp_path, monkeypatch) -> None:
    pw = tmp_path / "pw"
    pw.write_bytes(b"from file\r\nsecond line\n")
    monkeypatch.setenv("FERROLAB_PASSWORD_FILE", str(pw))
    assert B._credentials("open", None, None) == (b"from file", None)
    monkeypatch.setenv("FERROLAB_PASSWORD", "from env")
    assert B._credentials("open", None, None) == (b"from env", None)  # FERROLAB_PASSWORD first
    assert B._credentials("open", "explicit", None) == (b"explicit", None)  # arguments before the environment
    monkeypatch.setenv("FERROLAB_PASSWORD", "")  # empty counts as unset
    assert B._credentials("open", None, None) == (b"from file", None)
    pw.write_bytes(b"\nnot the first line\n")
    with pytest.raises(ValueError, match="FERROLAB_PASSWORD_FILE"):
        B._credentials("open", None, None)
    monkeypatch.setenv("FERROLAB_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        B._credentials("open", None, None)


# --- init/open arguments (checked before the native repository is touched) --------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"compression": 0}, ValueError, r"init\(\): argument 'compression' is 0; expected .*1\.\.22"),
        ({"compression": 23}, ValueError, "compression"),
        ({"compression": True}, TypeError, "compression.*bool"),
        ({"compression": 3.0}, TypeError, "compression.*float"),
        ({"compression": "3"}, TypeError, "compression.*str"),
        ({}, ValueError, r"init\(\): argument 'password' or 'key_file' is required"),
        ({"password": "pw", "key_file": "k"}, ValueError, "not both"),
        ({"password": "pw", "s3": {"endpoint": "http://x"}}, ValueError, "only for s3://"),
    ],
)
def test_init_arguments(tmp_path, kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        Repository.init(tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("s3", "exc", "match"),
    [
        ({"bucket": "x"}, ValueError, "unknown key 'bucket'"),
        ({"region": 5}, TypeError, r"s3\['region'\] must be a str"),
        ({"allow_http": "yes"}, TypeError, "allow_http.*bool"),
        (["endpoint"], TypeError, "'s3' must be a dict"),
    ],
)
def test_s3_options_are_checked(s3, exc, match) -> None:
    with pytest.raises(exc, match=match):
        Repository.open("s3://bucket/prefix", password="pw", s3=s3)


def test_s3_options_are_normalized() -> None:
    opts = B._s3_options("open", {"endpoint": "http://minio:9000", "region": None, "allow_http": True}, "s3://b/p")
    assert opts == {"endpoint": "http://minio:9000", "allow_http": True}
    assert set(B.S3_KEYS) == {"endpoint", "region", "access_key_id", "secret_access_key", "session_token",
                              "allow_http"}


def test_url_types(tmp_path) -> None:
    for bad, exc in ((None, TypeError), (42, TypeError), (b"/srv", TypeError), ("", ValueError)):
        with pytest.raises(exc, match=r"open\(\): argument 'url'"):
            Repository.open(bad, password="pw")
    assert B._local_url("open", tmp_path) == str(tmp_path)
    assert B._local_url("open", "rel/repo") == os.path.join(os.getcwd(), "rel", "repo")
    assert B._local_url("open", "s3://bucket/a/b") == "s3://bucket/a/b"


def test_url_schemes_and_nul(tmp_path, monkeypatch) -> None:
    """Only local paths, file:// and s3:// are repositories: 'ftp://host/x' used to create ./ftp:/host/x."""
    monkeypatch.chdir(tmp_path)
    assert B._local_url("init", "file:///srv/backups") == "file:///srv/backups"
    assert B._local_url("init", "S3://bucket/p") == "s3://bucket/p"
    assert B._local_path("file:///srv/backups") == "/srv/backups" and B._local_path("s3://b/p") is None
    for url in ("ftp://host/x", "https://host/x", "gs://bucket/x"):
        scheme = url.split(":")[0]
        with pytest.raises(ValueError, match=rf"init\(\): argument 'url' has the unsupported scheme '{scheme}://'"):
            Repository.init(url, password="pw")
    with pytest.raises(ValueError, match=r"open\(\): argument 'url' is 'file://' without a path"):
        Repository.open("file://", password="pw")
    for bad in ("/srv/ba\0ck", tmp_path / "r\0x"):
        with pytest.raises(ValueError, match=r"init\(\): argument 'url' contains a NUL character"):
            Repository.init(bad, password="pw")
    assert os.listdir(tmp_path) == []


def test_repository_cannot_be_constructed_directly() -> None:
    with pytest.raises(TypeError, match=r"Repository\.init\(\) or Repository\.open\(\)"):
        Repository(object())


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("/srv/backups", "/srv/backups"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("s3://AKIA:secret@bucket/prefix", "s3://bucket/prefix"),
        ("s3://user@bucket", "s3://bucket"),
        ("s3://bucket/p?X-Amz-Signature=abc#frag", "s3://bucket/p"),
        ("/dir/with@sign", "/dir/with@sign"),
        # secrets with an unencoded "/" (AWS secret keys have them), and "@" in the path
        ("s3://AKIA:ab/cd@bucket/pre@fix", "s3://bucket/pre@fix"),
        ("s3://AKIA:/cd@bucket/p", "s3://bucket/p"),
        ("s3://AKIA:12/cd@bucket/p", "s3://bucket/p"),
        ("s3://bucket/prefix?x=a@b", "s3://bucket/prefix"),
        ("s3://bucket/backups@host1", "s3://bucket/backups@host1"),
    ],
)
def test_repository_label_has_no_credentials(url, label) -> None:
    assert B._redact_url(url) == label


# --- backup arguments ------------------------------------------------------------------------------------------
def test_paths_are_absolute_unique_and_must_exist(tmp_path, monkeypatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "f").write_text("x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    monkeypatch.chdir(tmp_path)
    assert B._paths("backup", "a") == [str(tmp_path / "a")]
    assert B._paths("backup", pathlib.Path("a")) == [str(tmp_path / "a")]
    assert B._paths("backup", ["a", "./a", tmp_path / "f", "a/../f", "dangling"]) == [
        str(tmp_path / "a"), str(tmp_path / "f"), str(tmp_path / "dangling")]
    with pytest.raises(FileNotFoundError) as info:
        B._paths("backup", ["a", "missing"])
    assert info.value.filename == str(tmp_path / "missing")
    with pytest.raises(ValueError, match="'paths' is empty"):
        B._paths("backup", [])
    with pytest.raises(ValueError, match="empty path"):
        B._paths("backup", [""])
    with pytest.raises(TypeError, match="'paths'"):
        B._paths("backup", b"a")
    with pytest.raises(TypeError, match="'paths'"):
        B._paths("backup", [1])
    with pytest.raises(TypeError, match="'paths'"):
        B._paths("backup", 3)


def test_tags_and_patterns() -> None:
    assert B._tags("backup", "nightly") == ["nightly"]  # one tag, not its letters
    assert B._tags("backup", ("a", "b", "a")) == ["a", "b"]
    assert B._tags("backup", ()) == []
    for bad in (["a,b"], [""], [" "]):
        with pytest.raises(ValueError, match="'tags'"):
            B._tags("backup", bad)
    with pytest.raises(TypeError, match="'tags'"):
        B._tags("backup", [1])
    assert B._str_list("backup", "exclude", "*.tmp") == ["*.tmp"]
    with pytest.raises(TypeError, match="'exclude'"):
        B._str_list("backup", "exclude", 5)


def test_timestamps() -> None:
    assert B._timestamp("backup", "time", 1_700_000_000) == 1_700_000_000.0
    assert B._timestamp("backup", "time", datetime(2024, 5, 1, tzinfo=UTC)) == 1714521600.0
    naive = datetime(2024, 5, 1, 12)
    assert B._timestamp("backup", "time", naive) == naive.astimezone().timestamp()  # naive: local time
    with pytest.raises(TypeError, match="'time'"):
        B._timestamp("backup", "time", "2024-05-01")
    with pytest.raises(ValueError, match="'time'"):
        B._timestamp("backup", "time", float("nan"))
    with pytest.raises(ValueError, match=r"backup\(\): argument 'time' is datetime.datetime\(1, 1, 1, 0, 0\)"):
        B._timestamp("backup", "time", datetime.min)  # a naive year 1 has no local time east of UTC


def test_snapshot_times_must_fit_datetime() -> None:
    lo, hi = B._TIME_MIN.timestamp(), B._TIME_MAX.timestamp()
    assert B._snapshot_timestamp("backup", "time", lo) == lo and B._snapshot_timestamp("backup", "time", hi) == hi
    assert B._snapshot_timestamp("backup", "time", B._TIME_MAX) == hi
    for bad in (hi + 1, lo - 1, 1e20, -1e20, 2**70):
        with pytest.raises(ValueError, match=r"backup\(\): argument 'time' is .* expected a time from 0001-01-02"):
            B._snapshot_timestamp("backup", "time", bad)
    with pytest.raises(ValueError, match=r"milliseconds\? it takes seconds"):
        B._snapshot_timestamp("backup", "time", 1_714_521_600_000)


# --- choosing the snapshot to restore --------------------------------------------------------------------------
T = datetime(2024, 5, 1, 12, tzinfo=UTC)
SNAPS = [
    snap("1a2b" + "0" * 60, T),
    snap("1a2c" + "0" * 60, T + timedelta(days=1)),
    snap("ffee" + "1" * 60, T + timedelta(days=2)),
]


def test_select_latest_id_prefix_and_snapshot() -> None:
    sel = B._select_snapshot
    assert sel("restore", SNAPS) is SNAPS[2]
    assert sel("restore", list(reversed(SNAPS)), "latest") is SNAPS[2]
    assert sel("restore", SNAPS, SNAPS[0].id) is SNAPS[0]
    assert sel("restore", SNAPS, "1A2C") is SNAPS[1]  # case-insensitive
    assert sel("restore", SNAPS, "ffee1111") is SNAPS[2]
    assert sel("restore", SNAPS, SNAPS[1]) is SNAPS[1]


@pytest.mark.parametrize(
    ("spec", "exc", "match"),
    [
        ("1a2", ValueError, r"argument 'snapshot' is '1a2'; expected .*at least 4 hex digits"),
        ("1a2g", ValueError, "at least 4 hex digits"),
        ("1a2b" + "0" * 61, ValueError, "at least 4 hex digits"),
        ("", ValueError, "at least 4 hex digits"),
        ("1a2d", ValueError, "no snapshot '1a2d'"),
        (12, TypeError, "'snapshot'"),
    ],
)
def test_select_errors(spec, exc, match) -> None:
    with pytest.raises(exc, match=match):
        B._select_snapshot("restore", SNAPS, spec)


def test_an_ambiguous_prefix_lists_the_candidates() -> None:
    with pytest.raises(ValueError, match=r"the prefix '1a2b' is ambiguous \(2 snapshots: 1a2b0000, 1a2bffff\)"):
        B._select_snapshot("restore", SNAPS + [snap("1a2b" + "f" * 60, T)], "1a2b")
    many = [snap(f"abcd{i:060x}", T + timedelta(seconds=i)) for i in range(7)]
    with pytest.raises(ValueError, match=r"\(7 snapshots: .*, \.\.\.\)"):
        B._select_snapshot("restore", many, "abcd")
    with pytest.raises(ValueError, match="no snapshots"):
        B._select_snapshot("restore", [], "latest")


def test_select_at_a_time() -> None:
    sel = B._select_snapshot
    assert sel("restore", SNAPS, at="2024-05-02T12:00:00Z") is SNAPS[1]  # at or before: the same second counts
    assert sel("restore", SNAPS, at="2024-05-02T11:59:59+00:00") is SNAPS[0]
    assert sel("restore", SNAPS, at="2024-05-02T14:00:00+02:00") is SNAPS[1]
    assert sel("restore", SNAPS, at=datetime(2030, 1, 1, tzinfo=UTC)) is SNAPS[2]
    assert sel("restore", SNAPS, at=date(2024, 5, 4)) is SNAPS[2]
    local = (T + timedelta(days=1, minutes=1)).astimezone().replace(tzinfo=None)  # naive: local time
    assert sel("restore", SNAPS, at=local) is SNAPS[1]
    assert sel("restore", SNAPS, at=local.isoformat()) is SNAPS[1]
    with pytest.raises(ValueError, match=r"restore\(\): argument 'at' .*no snapshot at or before it"):
        sel("restore", SNAPS, at="2024-04-30T00:00:00Z")
    with pytest.raises(ValueError, match="either argument 'snapshot' or argument 'at'"):
        sel("restore", SNAPS, "ffee", at="2024-05-02")
    with pytest.raises(ValueError, match="ISO 8601"):
        sel("restore", SNAPS, at="last tuesday")
    with pytest.raises(TypeError, match="'at'"):
        sel("restore", SNAPS, at=1714521600)


def test_ties_in_time_go_to_the_larger_id() -> None:
    a, b = snap("aaaa" + "0" * 60, T), snap("bbbb" + "0" * 60, T)
    assert B._select_snapshot("restore", [b, a]) is b
    assert B._select_snapshot("restore", [a, b], at=T) is b


def test_include_paths() -> None:
    one = snap("c" * 64, T, paths=("/srv/data",))
    assert B._include_paths("restore", one, None) is None
    assert B._include_paths("restore", one, "runs/7") == ["/srv/data/runs/7"]
    assert B._include_paths("restore", one, pathlib.PurePosixPath("runs/7/")) == ["/srv/data/runs/7"]
    assert B._include_paths("restore", one, ["/srv/data/a.txt", "./b/../c", "c"]) == [
        "/srv/data/a.txt", "/srv/data/c"]
    several = snap("d" * 64, T, paths=("/srv/data", "/etc/app"))
    assert B._include_paths("restore", several, ["srv/data/x", "/etc/app/y"]) == ["/srv/data/x", "/etc/app/y"]
    siblings = snap("e" * 64, T, paths=("/srv/lab/a", "/srv/lab/b"))
    assert B._include_paths("restore", siblings, "a/notes.txt") == ["/srv/lab/a/notes.txt"]
    with pytest.raises(ValueError, match="'include' is empty"):
        B._include_paths("restore", one, [])
    with pytest.raises(ValueError, match="empty path"):
        B._include_paths("restore", one, [""])
    with pytest.raises(TypeError, match="'include'"):
        B._include_paths("restore", one, 7)


def test_parse_at() -> None:
    assert B._parse_at("restore", "2024-05-01T12:30:00Z") == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert B._parse_at("restore", " 2024-05-01 12:30+02:00 ") == datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
    naive = B._parse_at("restore", "2024-05-01T12:30")
    assert naive.tzinfo is not None and naive.replace(tzinfo=None) == datetime(2024, 5, 1, 12, 30)
    aware = datetime(2024, 5, 1, tzinfo=timezone(timedelta(hours=-3)))
    assert B._parse_at("restore", aware) is aware


# --- result types ----------------------------------------------------------------------------------------------
def test_snapshot_from_native_dict() -> None:
    raw = {"id": "ab" * 32, "time": 1714564800.25, "paths": ["/srv/data"], "tags": ["nightly"], "hostname": "box",
           "files": 3, "dirs": 2, "bytes": 4096, "added_bytes": 1000, "parent": None, "duration": 0.5}
    s = Snapshot._from_native(raw)
    assert s.time == datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC) and s.time.tzinfo is UTC
    assert (s.paths, s.tags, s.hostname, s.short_id) == (("/srv/data",), ("nightly",), "box", "abababab")
    assert (s.files, s.dirs, s.bytes, s.added_bytes, s.parent, s.duration) == (3, 2, 4096, 1000, None, 0.5)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["time"] == "2024-05-01T12:00:00.250000+00:00" and d["paths"] == ["/srv/data"]
    assert d["short_id"] == "abababab" and d["bytes"] == 4096
    with pytest.raises(AttributeError):
        s.id = "x"  # frozen
    assert hash(s) == hash(Snapshot._from_native(raw)) and s == Snapshot._from_native(raw)
    assert "4096" not in repr(s) and "abab" in repr(s)
    assert s.warnings == () and d["warnings"] == []
    w = Snapshot._from_native({**raw, "warnings": ["/srv/data/key: Permission denied (os error 13)"]})
    assert w.warnings == ("/srv/data/key: Permission denied (os error 13)",) and "Permission" not in repr(w)
    assert w.to_dict()["warnings"] == ["/srv/data/key: Permission denied (os error 13)"]


@pytest.mark.parametrize("stored, end", [(1e20, "min"), (1_714_521_600_000, "ms"), (-1e20, "min"),
                                         (float("nan"), "min"), ("garbage", "min"), (2.5e14, "ms"),
                                         (2.6e17, "min")])
def test_a_stored_time_out_of_range_is_clamped(stored, end, caplog) -> None:
    """Written by an older version (``backup(time=<milliseconds>)``) or crafted, it used to break every listing; a
    crafted one must not become the newest (it would hide real snapshots from "latest" and keep a stale backup
    looking fresh), so only milliseconds are read as a time and the rest as the oldest."""
    expected = {"ms": datetime.fromtimestamp(float(stored) / 1000, UTC) if end == "ms" else None,
                "min": datetime(1, 1, 2, tzinfo=UTC)}[end]
    with caplog.at_level("WARNING", logger="ferrolab.backup"):
        s = Snapshot._from_native({"id": "cd" * 32, "time": stored})
    assert s.time == expected and s.time.tzinfo is UTC
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "cdcdcdcd" in caplog.records[0].getMessage()
    assert json.loads(json.dumps(s.to_dict()))["time"] == expected.isoformat()


def test_verify_report() -> None:
    good = VerifyReport(True, [], 3, 10, 400, 5 << 20)
    assert good and str(good) == "repository ok: 3 snapshots, 10 packs, 400 blobs checked, 5.0 MiB read"
    bad = VerifyReport(False, [VerifyError("pack 1f", "missing", "not in the store"),
                               VerifyError("/srv/data/a.bin", "corrupt", "chunk 3 fails authentication")], 1, 1, 1, 0)
    assert not bad
    assert str(bad).splitlines() == [
        "repository damaged: 2 errors (1 snapshot, 1 pack, 1 blob checked, 0 B read)",
        "  missing: pack 1f: not in the store",
        "  corrupt: /srv/data/a.bin: chunk 3 fails authentication",
    ]
    assert json.loads(json.dumps(bad.to_dict()))["errors"][1] == {
        "item": "/srv/data/a.bin", "kind": "corrupt", "message": "chunk 3 fails authentication"}


def test_format_bytes() -> None:
    assert [B._format_bytes(n) for n in (0, 1023, 1024, 10**6, 2**40, 2**70)] == [
        "0 B", "1023 B", "1.0 KiB", "976.6 KiB", "1.0 TiB", "1048576.0 PiB"]


# --- progress --------------------------------------------------------------------------------------------------
def test_progress_argument() -> None:
    assert B._progress("backup", False)[0] is None
    assert B._progress("backup", None)[0] is None
    seen = []
    cb, close = B._progress("backup", seen.append)
    assert cb == seen.append
    close()
    assert isinstance(B._progress("backup", True)[0], B._Bar)
    with pytest.raises(TypeError, match=r"restore\(\): argument 'progress'"):
        B._progress("restore", "yes")


def test_progress_bar_draws_each_phase_on_stderr(capsys) -> None:
    bar, close = B._progress("backup", True)
    assert bar is not None
    bar({"phase": "scan", "done_bytes": 0, "total_bytes": 0, "done_files": 10, "total_files": 0})
    bar({"phase": "backup", "done_bytes": 512 * 1024, "total_bytes": 2 << 20, "done_files": 1, "total_files": 4})
    bar({"phase": "backup", "done_bytes": 3 << 20, "total_bytes": 2 << 20, "done_files": 4, "total_files": 4})
    bar({"phase": "backup", "done_bytes": 1 << 20, "total_bytes": 2 << 20, "done_files": 4, "total_files": 4})
    close()
    close()  # idempotent
    out, err = capsys.readouterr()
    assert out == ""
    assert "scan: " in err and "10 files" in err  # total unknown: a counter
    assert "backup:  50%" in err and "1.00M/2.00M" in err and "4/4 files" in err  # done went back: so does the bar


# --- metrics ---------------------------------------------------------------------------------------------------
def _value(name: str, labels: dict[str, str]) -> float:
    return fl.metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_backup_series_exist_and_durations_are_recorded_even_on_failure() -> None:
    prefix = fl.metrics.settings()["prefix"]
    series = B._metrics()
    assert B._metrics() is series
    series.last_success.labels(repository="/srv/test-exposition").set(1.0)
    text = fl.metrics.exposition()
    series.last_success.remove("/srv/test-exposition")
    for line in (f"# TYPE {prefix}_backup_last_success_timestamp_seconds gauge",
                 f"# TYPE {prefix}_backup_duration_seconds histogram",
                 f"# TYPE {prefix}_backup_bytes_total counter",
                 f'{prefix}_backup_bytes_total{{kind="restored"}} '):
        assert line in text
    name = f"{prefix}_backup_duration_seconds_count"
    before = _value(name, {"operation": "verify"})
    with B._Timed("verify"):
        pass
    with pytest.raises(RuntimeError), B._Timed("verify"):
        raise RuntimeError("native failure")
    assert _value(name, {"operation": "verify"}) == before + 2


def test_backup_series_follow_a_prefix_change(monkeypatch) -> None:
    old = fl.metrics.settings()["prefix"]
    B._metrics()
    monkeypatch.setitem(B._last_success, "/srv/test-prefix", 1234.0)
    fl.metrics.configure(prefix="fltestprefix")
    try:
        series = B._metrics()
        assert series.prefix == "fltestprefix"
        assert _value("fltestprefix_backup_last_success_timestamp_seconds", {"repository": "/srv/test-prefix"}) == 1234
        assert f"{old}_backup_duration_seconds" not in fl.metrics.exposition()
    finally:
        fl.metrics.configure(prefix=old)
    assert B._metrics().prefix == old
    assert "fltestprefix_backup" not in fl.metrics.exposition()
    assert f"{old}_backup_duration_seconds" in fl.metrics.exposition()


def test_a_taken_metric_name_warns_and_never_breaks_a_backup(monkeypatch) -> None:
    prefix = "fltesttaken"
    squatter = fl.metrics.Gauge(f"{prefix}_backup_bytes", "Someone else's metric.")
    old = fl.metrics.settings()["prefix"]
    fl.metrics.configure(prefix=prefix)
    try:
        with pytest.warns(RuntimeWarning, match="cannot register 'fltesttaken_backup_bytes'"):
            series = B._metrics()
        series.bytes.labels(kind="read").inc(10)  # works, but is not exposed
        assert "fltesttaken_backup_bytes_total" not in fl.metrics.exposition()
        assert "fltesttaken_backup_duration_seconds" in fl.metrics.exposition()
    finally:
        fl.metrics.configure(prefix=old)
        fl.metrics.REGISTRY.unregister(squatter)
    B._metrics()


def test_module_surface() -> None:
    assert fl.backup is B
    assert {"Repository", "Snapshot", "VerifyReport", "VerifyError", "ForgetResult"} <= set(B.__all__)
    if hasattr(fl._core, "BackupError"):  # pragma: no branch - the native errors
        for name in ("BackupError", "RepositoryNotFound", "WrongPassword", "CorruptionError", "LockedError"):
            cls = getattr(fl, name)
            assert getattr(B, name) is cls and issubclass(cls, fl.FerrolabError) and name in fl.__all__
            assert name == "BackupError" or issubclass(cls, fl.BackupError)
    assert sys.modules["ferrolab.backup"] is B


def test_keep_within_seconds_beyond_timedelta_is_a_value_error() -> None:
    """``forget(keep_within=1e300)`` used to raise a bare OverflowError from timedelta."""
    for huge in (1e300, 10**20, float(timedelta.max.total_seconds()) * 2):
        with pytest.raises(ValueError, match=r"forget\(\): argument 'keep_within' is .* seconds; expected at most"):
            B._make_policy("forget", keep_within=huge)
    assert B._make_policy("forget", keep_within=86_400).within == timedelta(days=1)
