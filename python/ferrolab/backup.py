"""Snapshots of directories: deduplicated, compressed, encrypted, verifiable (``fl.backup``).

A :class:`Repository` is a directory (or an ``s3://bucket/prefix``) holding encrypted, content-addressed data. Every
:meth:`Repository.backup` stores a :class:`Snapshot` of some paths: files are split by content-defined chunking, each
chunk is stored once (unchanged data costs nothing the second time), zstd-compressed and sealed with an
authenticated cipher under a key that only the password (or key file) unlocks. :meth:`Repository.restore` brings a
snapshot back (or a part of it, or the one that was current at some time), :meth:`Repository.verify` proves that
everything can be read back, :meth:`Repository.forget` applies a retention policy with restic's rules and
:meth:`Repository.prune` frees the space that forgotten snapshots no longer need.

The work is native (``ferrolab._core.BackupRepository``); this module checks arguments, resolves passwords, draws
progress bars and records the backup series on ``/metrics``:

* ``ferrolab_backup_last_success_timestamp_seconds{repository}``: time of the newest successful backup per
  repository (the URL without credentials);
* ``ferrolab_backup_duration_seconds{operation}`` (histogram; operation ``backup``, ``restore``, ``verify``,
  ``prune``), failed runs included;
* ``ferrolab_backup_bytes_total{kind}``: ``read`` (file bytes scanned by backups), ``added`` (bytes stored in the
  repository after compression and encryption) and ``restored``.

Errors: :class:`BackupError` (a :class:`ferrolab.FerrolabError`) and its subclasses :class:`RepositoryNotFound`,
:class:`WrongPassword`, :class:`CorruptionError` and :class:`LockedError`; a path that does not exist raises
:class:`FileNotFoundError`, a bad argument :class:`TypeError` or :class:`ValueError`.

Examples
--------
>>> import pathlib, tempfile, ferrolab as fl
>>> with tempfile.TemporaryDirectory() as tmp:
...     data = pathlib.Path(tmp, "data")
...     data.mkdir()
...     _ = (data / "results.csv").write_text("x,y\\n1,2\\n")
...     repo = fl.backup.Repository.init(pathlib.Path(tmp, "repo"), password="correct horse battery")
...     snap = repo.backup(data, tags=["nightly"])
...     (data / "results.csv").unlink()
...     counts = repo.restore("latest", target=data.parent / "restored")
...     restored = (data.parent / "restored").rglob("results.csv")
...     print(snap.files, snap.tags, counts["files"], [p.read_text() for p in restored], bool(repo.verify()))
1 ('nightly',) 1 ['x,y\\n1,2\\n'] True
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import re
import sys
import threading
import time as _time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, NamedTuple

from . import _core

__all__ = ["ForgetResult", "Repository", "Snapshot", "VerifyError", "VerifyReport"]

try:  # the native backup errors (absent from builds made before the backup core)
    from ._core import BackupError, CorruptionError, LockedError, RepositoryNotFound, WrongPassword
except ImportError:  # pragma: no cover - only while the native part is being written
    pass
else:
    __all__ += ["BackupError", "CorruptionError", "LockedError", "RepositoryNotFound", "WrongPassword"]

#: Keys accepted in ``s3={...}`` (values are str, ``allow_http`` a bool); missing ones come from ``AWS_*``.
S3_KEYS = ("endpoint", "region", "access_key_id", "secret_access_key", "session_token", "allow_http")

#: What ``group_by`` of :meth:`Repository.forget` may contain.
GROUP_BY_KEYS = ("host", "paths", "tags")

_HEX = re.compile(r"[0-9a-f]+")
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
_DURATION_PART = re.compile(r"(\d+)([ymdh])")
_PRIVATE = object()


# --- snapshots and reports -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One backup: which paths, when, from which host, with which tags, and how much data.

    Attributes
    ----------
    id : str
        64 hex digits; :attr:`short_id` is its first 8.
    time : datetime.datetime
        When the backup started (timezone-aware, UTC).
    paths : tuple of str
        The absolute paths that were backed up.
    tags : tuple of str
    hostname : str
    files, dirs : int
        How many files and directories the snapshot holds.
    bytes : int
        Total size of its files.
    added_bytes : int
        Bytes this backup added to the repository (new data, after compression and encryption).
    parent : str or None
        Id of the snapshot this one was compared with to skip unchanged files.
    duration : float
        Seconds the backup took.
    """

    id: str
    time: datetime
    paths: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    hostname: str = ""
    files: int = dataclasses.field(default=0, repr=False)
    dirs: int = dataclasses.field(default=0, repr=False)
    bytes: int = dataclasses.field(default=0, repr=False)
    added_bytes: int = dataclasses.field(default=0, repr=False)
    parent: str | None = dataclasses.field(default=None, repr=False)
    duration: float = dataclasses.field(default=0.0, repr=False)

    @property
    def short_id(self) -> str:
        """The first 8 hex digits of :attr:`id` (what listings show)."""
        return self.id[:8]

    @classmethod
    def _from_native(cls, d: Mapping[str, Any]) -> Snapshot:
        return cls(
            id=str(d["id"]),
            time=datetime.fromtimestamp(float(d["time"]), tz=UTC),
            paths=tuple(d.get("paths") or ()),
            tags=tuple(d.get("tags") or ()),
            hostname=str(d.get("hostname") or ""),
            files=int(d.get("files") or 0),
            dirs=int(d.get("dirs") or 0),
            bytes=int(d.get("bytes") or 0),
            added_bytes=int(d.get("added_bytes") or 0),
            parent=d.get("parent") or None,
            duration=float(d.get("duration") or 0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``time`` as ISO 8601 in UTC, ``short_id`` added).

        Examples
        --------
        >>> from datetime import UTC, datetime
        >>> from ferrolab.backup import Snapshot
        >>> s = Snapshot("ab" * 32, datetime(2024, 5, 1, 12, tzinfo=UTC), ("/srv/data",), ("nightly",))
        >>> s.to_dict()["time"], s.short_id
        ('2024-05-01T12:00:00+00:00', 'abababab')
        """
        d = dataclasses.asdict(self)
        d["time"] = self.time.isoformat()
        d["paths"] = list(self.paths)
        d["tags"] = list(self.tags)
        d["short_id"] = self.short_id
        return d


@dataclasses.dataclass(frozen=True)
class VerifyError:
    """One damaged item found by :meth:`Repository.verify`.

    Attributes
    ----------
    item : str
        What is damaged: a pack, a blob, a snapshot or a file path inside a snapshot.
    kind : str
        The kind of damage (e.g. ``"missing"``, ``"corrupt"``, ``"unreadable"``).
    message : str
        Details.
    """

    item: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.item}: {self.message}"


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """The result of :meth:`Repository.verify`; true when the repository is intact.

    Attributes
    ----------
    ok : bool
        No damage found.
    errors : list of VerifyError
        Every damaged item (empty when ``ok``).
    snapshots, packs, blobs : int
        How many of each were checked.
    bytes_read : int
        Bytes read from the repository (all data with ``read_data=True``, else only metadata).

    Examples
    --------
    >>> from ferrolab.backup import VerifyError, VerifyReport
    >>> report = VerifyReport(False, [VerifyError("pack 5e1f3c2a", "corrupt", "hash mismatch")], 2, 7, 310, 1 << 20)
    >>> bool(report)
    False
    >>> print(report)
    repository damaged: 1 error (2 snapshots, 7 packs, 310 blobs checked, 1.0 MiB read)
      corrupt: pack 5e1f3c2a: hash mismatch
    """

    ok: bool
    errors: list[VerifyError] = dataclasses.field(default_factory=list)
    snapshots: int = 0
    packs: int = 0
    blobs: int = 0
    bytes_read: int = 0

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        checked = (
            f"{self.snapshots} snapshot{_s(self.snapshots)}, {self.packs} pack{_s(self.packs)}, "
            f"{self.blobs} blob{_s(self.blobs)} checked, {_format_bytes(self.bytes_read)} read"
        )
        if self.ok:
            return f"repository ok: {checked}"
        n = len(self.errors)
        lines = [f"repository damaged: {n} error{_s(n)} ({checked})"]
        lines += [f"  {e}" for e in self.errors]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``errors`` as a list of dicts)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ForgetResult:
    """What :meth:`Repository.forget` kept and removed (or would remove, with ``dry_run=True``).

    Attributes
    ----------
    keep, remove : list of Snapshot
        Newest first.
    reasons : dict of str to list of str
        For each kept snapshot's id, the rules that kept it, in restic's words (``"last snapshot"``,
        ``"daily snapshot"``, ``"within 2d"``...).
    dry_run : bool
        True when nothing was deleted.
    """

    keep: list[Snapshot]
    remove: list[Snapshot]
    reasons: dict[str, list[str]]
    dry_run: bool = False


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _format_bytes(n: float) -> str:
    """Size in binary units, as listings show it.

    Examples
    --------
    >>> from ferrolab.backup import _format_bytes
    >>> _format_bytes(0), _format_bytes(1536), _format_bytes(3 * 2**30)
    ('0 B', '1.5 KiB', '3.0 GiB')
    """
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


# --- argument checks -------------------------------------------------------------------------------------------
def _type_name(x: Any) -> str:
    return type(x).__name__


def _local_url(func: str, url: Any) -> str:
    """``url`` as a str: URLs with a scheme unchanged, local paths made absolute."""
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str):
        raise TypeError(f"{func}(): argument 'url' must be a str or os.PathLike, got {_type_name(url)}")
    if not url:
        raise ValueError(f"{func}(): argument 'url' is empty")
    if _SCHEME.match(url):
        return url
    return os.path.abspath(url)


def _redact_url(url: str) -> str:
    """``url`` without credentials, query or fragment (for metric labels and reprs).

    Examples
    --------
    >>> from ferrolab.backup import _redact_url
    >>> _redact_url("s3://AKIA:secret@bucket/prefix?token=x"), _redact_url("/srv/backups")
    ('s3://bucket/prefix', '/srv/backups')
    """
    if not _SCHEME.match(url):
        return url
    scheme, rest = url.split("://", 1)
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def _read_first_line(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        line = f.readline()
    return line.rstrip(b"\n").rstrip(b"\r")


def _credentials(func: str, password: Any, key_file: Any) -> tuple[bytes | None, bytes | None]:
    """``(password bytes, key file bytes)``, exactly one of them set; see :meth:`Repository.init`."""
    if password is not None and key_file is not None:
        raise ValueError(f"{func}(): give either argument 'password' or argument 'key_file', not both")
    if key_file is not None:
        if not isinstance(key_file, str | os.PathLike):
            raise TypeError(f"{func}(): argument 'key_file' must be a path (str or os.PathLike), got "
                            f"{_type_name(key_file)}")
        with open(key_file, "rb") as f:
            key = f.read()
        if not key:
            raise ValueError(f"{func}(): argument 'key_file': {os.fspath(key_file)!r} is empty")
        return None, key
    if password is not None:
        if isinstance(password, str):
            secret = password.encode("utf-8")
        elif isinstance(password, bytes | bytearray | memoryview):
            secret = bytes(password)
        else:
            raise TypeError(f"{func}(): argument 'password' must be a str or bytes, got {_type_name(password)}")
        if not secret:
            raise ValueError(f"{func}(): argument 'password' is empty")
        return secret, None
    env = os.environ.get("FERROLAB_PASSWORD")
    if env:
        return os.fsencode(env), None
    env_file = os.environ.get("FERROLAB_PASSWORD_FILE")
    if env_file:
        secret = _read_first_line(env_file)
        if not secret:
            raise ValueError(f"{func}(): the first line of FERROLAB_PASSWORD_FILE ({env_file!r}) is empty")
        return secret, None
    raise ValueError(
        f"{func}(): argument 'password' or 'key_file' is required (or set FERROLAB_PASSWORD or "
        "FERROLAB_PASSWORD_FILE)"
    )


def _s3_options(func: str, s3: Any, url: str) -> dict[str, Any] | None:
    if s3 is None:
        return None
    if not isinstance(s3, Mapping):
        raise TypeError(f"{func}(): argument 's3' must be a dict, got {_type_name(s3)}")
    if not url.startswith("s3://"):
        raise ValueError(f"{func}(): argument 's3' is only for s3:// URLs, and url is {_redact_url(url)!r}")
    out: dict[str, Any] = {}
    for key, value in s3.items():
        if key not in S3_KEYS:
            raise ValueError(f"{func}(): argument 's3' has the unknown key {key!r}; expected some of {S3_KEYS}")
        if value is None:
            continue
        if key == "allow_http":
            if not isinstance(value, bool):
                raise TypeError(f"{func}(): s3['allow_http'] must be a bool, got {_type_name(value)}")
        elif not isinstance(value, str):
            raise TypeError(f"{func}(): s3[{key!r}] must be a str, got {_type_name(value)}")
        out[key] = value
    return out


def _str_list(func: str, arg: str, value: Any) -> list[str]:
    """A str or an iterable of str as a list (a single str is one item, not its characters)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes | bytearray) or not isinstance(value, Iterable):
        raise TypeError(f"{func}(): argument '{arg}' must be a str or an iterable of str, got {_type_name(value)}")
    items = list(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{func}(): argument '{arg}' must contain only str, got {_type_name(item)}")
    return items


def _tags(func: str, value: Any) -> list[str]:
    out: list[str] = []
    for tag in _str_list(func, "tags", value):
        if not tag.strip() or "," in tag:
            raise ValueError(f"{func}(): argument 'tags' has the invalid tag {tag!r} (empty, or with a comma)")
        if tag not in out:
            out.append(tag)
    return out


def _paths(func: str, paths: Any) -> list[str]:
    """Absolute, de-duplicated paths; FileNotFoundError for one that does not exist."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if isinstance(paths, bytes | bytearray) or not isinstance(paths, Iterable):
        raise TypeError(f"{func}(): argument 'paths' must be a path or an iterable of paths, got {_type_name(paths)}")
    out: list[str] = []
    for p in paths:
        if not isinstance(p, str | os.PathLike):
            raise TypeError(f"{func}(): argument 'paths' must contain str or os.PathLike, got {_type_name(p)}")
        s = os.fspath(p)
        if isinstance(s, bytes):
            s = os.fsdecode(s)
        if not s:
            raise ValueError(f"{func}(): argument 'paths' contains an empty path")
        a = os.path.abspath(s)
        if not os.path.lexists(a):
            raise FileNotFoundError(2, f"{func}(): path does not exist", a)
        if a not in out:
            out.append(a)
    if not out:
        raise ValueError(f"{func}(): argument 'paths' is empty")
    return out


def _timestamp(func: str, arg: str, value: Any) -> float:
    """Seconds since the epoch from a datetime (naive = local time) or a number."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{func}(): argument '{arg}' must be a datetime or a number, got {_type_name(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{func}(): argument '{arg}' is {value!r}; expected a finite number")
    return float(value)


def _parse_at(func: str, at: Any) -> datetime:
    """``at`` as an aware datetime: ISO 8601 text, a date or a datetime; naive values are local time.

    Examples
    --------
    >>> from ferrolab.backup import _parse_at
    >>> _parse_at("restore", "2024-05-01T12:30:00Z")
    datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc)
    """
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at.strip())
        except ValueError:
            raise ValueError(f"{func}(): argument 'at' is {at!r}; expected an ISO 8601 time such as "
                             "'2024-05-01T12:00:00' or '2024-05-01 12:00+02:00'") from None
    elif isinstance(at, date) and not isinstance(at, datetime):
        at = datetime(at.year, at.month, at.day)
    if not isinstance(at, datetime):
        raise TypeError(f"{func}(): argument 'at' must be an ISO 8601 str or a datetime, got {_type_name(at)}")
    return at.astimezone() if at.tzinfo is None else at


def _select_snapshot(func: str, snapshots: Sequence[Snapshot], spec: Any = "latest", at: Any = None) -> Snapshot:
    """The snapshot that ``spec`` (``"latest"``, an id, a unique id prefix or a Snapshot) or ``at`` names.

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> from ferrolab.backup import Snapshot, _select_snapshot
    >>> snaps = [Snapshot(c * 64, datetime(2024, 5, d, tzinfo=UTC)) for c, d in (("a", 1), ("b", 2))]
    >>> _select_snapshot("restore", snaps).short_id
    'bbbbbbbb'
    >>> _select_snapshot("restore", snaps, "aaaa").short_id
    'aaaaaaaa'
    >>> _select_snapshot("restore", snaps, at="2024-05-01T12:00:00+00:00").short_id
    'aaaaaaaa'
    """
    ordered = sorted(snapshots, key=lambda s: (s.time, s.id))
    if at is not None:
        if not (spec is None or spec == "latest"):
            raise ValueError(f"{func}(): give either argument 'snapshot' or argument 'at', not both")
        when = _parse_at(func, at)
        before = [s for s in ordered if s.time <= when]
        if not before:
            first = f"; the oldest is from {ordered[0].time.astimezone().isoformat()}" if ordered else ""
            raise ValueError(f"{func}(): argument 'at' is {when.isoformat()}: no snapshot at or before it{first}")
        return before[-1]
    if spec is None or spec == "latest":
        if not ordered:
            raise ValueError(f"{func}(): the repository has no snapshots")
        return ordered[-1]
    if isinstance(spec, Snapshot):
        spec = spec.id
    if not isinstance(spec, str):
        raise TypeError(f"{func}(): argument 'snapshot' must be 'latest', an id or a Snapshot, got {_type_name(spec)}")
    key = spec.strip().lower()
    if len(key) < 4 or len(key) > 64 or not _HEX.fullmatch(key):
        raise ValueError(f"{func}(): argument 'snapshot' is {spec!r}; expected 'latest', a snapshot id or a prefix "
                         "of at least 4 hex digits")
    found = [s for s in ordered if s.id.startswith(key)]
    if not found:
        raise ValueError(f"{func}(): argument 'snapshot': no snapshot {spec!r} in the repository")
    if len(found) > 1:
        ids = ", ".join(s.short_id for s in found[:5]) + (", ..." if len(found) > 5 else "")
        raise ValueError(f"{func}(): argument 'snapshot': the prefix {spec!r} is ambiguous ({len(found)} snapshots: "
                         f"{ids})")
    return found[0]


def _snapshot_root(snapshot: Snapshot) -> str:
    """The directory that relative ``include`` paths start from: the common directory of the snapshot's paths."""
    if not snapshot.paths:
        return os.sep
    return os.path.commonpath(list(snapshot.paths))


def _include_paths(func: str, snapshot: Snapshot, include: Any) -> list[str] | None:
    """``include`` as absolute original paths (relative ones are taken from the snapshot's root).

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> from ferrolab.backup import Snapshot, _include_paths
    >>> s = Snapshot("c" * 64, datetime(2024, 5, 1, tzinfo=UTC), ("/srv/data",))
    >>> _include_paths("restore", s, ["runs/7", "/srv/data/config.yml"])
    ['/srv/data/runs/7', '/srv/data/config.yml']
    """
    if include is None:
        return None
    if isinstance(include, str | os.PathLike):
        include = [include]
    if isinstance(include, bytes | bytearray) or not isinstance(include, Iterable):
        raise TypeError(f"{func}(): argument 'include' must be a path or an iterable of paths, got "
                        f"{_type_name(include)}")
    names = _str_list(func, "include", [os.fspath(p) if isinstance(p, os.PathLike) else p for p in include])
    if not names:
        raise ValueError(f"{func}(): argument 'include' is empty (pass None to restore everything)")
    root = _snapshot_root(snapshot)
    out = []
    for name in names:
        if not name:
            raise ValueError(f"{func}(): argument 'include' contains an empty path")
        p = name if os.path.isabs(name) else os.path.join(root, name)
        p = os.path.normpath(p)
        if p not in out:
            out.append(p)
    return out


# --- retention policy (restic's rules) -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Duration:
    """restic's calendar duration ``"2y5m7d3h"``."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __bool__(self) -> bool:
        return bool(self.years or self.months or self.days or self.hours)

    def __str__(self) -> str:
        return "".join(f"{n}{u}" for n, u in ((self.years, "y"), (self.months, "m"), (self.days, "d"),
                                               (self.hours, "h")) if n)


def _parse_duration(func: str, text: str) -> _Duration:
    """Parse restic's duration syntax: numbers followed by ``y``, ``m`` (months), ``d`` or ``h``.

    Examples
    --------
    >>> from ferrolab.backup import _parse_duration
    >>> _parse_duration("forget", "2y5m7d3h")
    _Duration(years=2, months=5, days=7, hours=3)
    """
    s = text.strip()
    fields: dict[str, int] = {}
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f"{func}(): argument 'keep_within' is {text!r}; expected a duration such as '2y5m7d3h' "
                             "(numbers followed by y, m, d or h)")
        unit = {"y": "years", "m": "months", "d": "days", "h": "hours"}[m.group(2)]
        if unit in fields:
            raise ValueError(f"{func}(): argument 'keep_within' is {text!r}: the unit {m.group(2)!r} appears twice")
        fields[unit] = int(m.group(1))
        pos = m.end()
    if not fields:
        raise ValueError(f"{func}(): argument 'keep_within' is empty; expected a duration such as '7d'")
    return _Duration(**fields)


@dataclasses.dataclass(frozen=True)
class _Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: _Duration | timedelta | None = None

    def __bool__(self) -> bool:
        return bool(self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly
                    or self.within)


_COUNT_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def _make_policy(func: str = "forget", **kwargs: Any) -> _Policy:
    """Validate the ``keep_*`` arguments of :meth:`Repository.forget` (``keep_last=...`` etc.)."""
    counts: dict[str, int] = {}
    within: _Duration | timedelta | None = None
    for arg, value in kwargs.items():
        rule = arg.removeprefix("keep_")
        if rule in _COUNT_RULES and arg.startswith("keep_"):
            if value is None:
                continue
            if isinstance(value, bool):
                raise TypeError(f"{func}(): argument '{arg}' must be an int, got bool")
            try:
                value = operator.index(value)  # int, NumPy integers
            except TypeError:
                raise TypeError(f"{func}(): argument '{arg}' must be an int, got {_type_name(value)}") from None
            if value < 0:
                raise ValueError(f"{func}(): argument '{arg}' is {value}; expected a count >= 0")
            counts[rule] = int(value)
        elif arg == "keep_within":
            if value is None:
                continue
            if isinstance(value, str):
                within = _parse_duration(func, value)
            elif isinstance(value, timedelta):
                if value < timedelta(0):
                    raise ValueError(f"{func}(): argument 'keep_within' is {value!r}; expected a duration >= 0")
                within = value
            elif isinstance(value, int | float) and not isinstance(value, bool):
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"{func}(): argument 'keep_within' is {value!r}; expected seconds >= 0")
                within = timedelta(seconds=value)
            else:
                raise TypeError(f"{func}(): argument 'keep_within' must be a timedelta, seconds or a duration str "
                                f"such as '2y5m7d3h', got {_type_name(value)}")
        else:
            raise TypeError(f"{func}(): unexpected argument {arg!r}")
    return _Policy(**counts, within=within)


def _bucket(rule: str, t: datetime) -> tuple[int, ...]:
    if rule == "hourly":
        return (t.year, t.month, t.day, t.hour)
    if rule == "daily":
        return (t.year, t.month, t.day)
    if rule == "weekly":
        iso = t.isocalendar()
        return (iso.year, iso.week)
    if rule == "monthly":
        return (t.year, t.month)
    return (t.year,)


def _cutoff(latest: datetime, within: _Duration | timedelta, tz: tzinfo | None) -> datetime | None:
    """``latest`` minus ``within`` (calendar arithmetic in local time for a restic duration, like Go's AddDate);
    None when that is before year 1 (every snapshot is then within)."""
    if isinstance(within, timedelta):
        try:
            return latest.astimezone(UTC) - within
        except OverflowError:
            return None
    local = latest.astimezone(tz)
    carry, month0 = divmod(local.month - 1 - within.months, 12)
    try:
        wall = datetime(local.year - within.years + carry, month0 + 1, 1, local.hour, local.minute, local.second,
                        local.microsecond)
        wall += timedelta(days=local.day - 1 - within.days)
        moved = wall.astimezone() if tz is None else wall.replace(tzinfo=tz)
        return moved.astimezone(UTC) - timedelta(hours=within.hours)
    except (ValueError, OverflowError):
        return None


def _require_policy(policy: _Policy) -> None:
    if not policy:
        raise ValueError(
            "forget(): no policy given: pass at least one of keep_last, keep_hourly, keep_daily, keep_weekly, "
            "keep_monthly, keep_yearly (> 0) or keep_within (> 0); restic refuses to forget every snapshot"
        )


class _PolicyResult(NamedTuple):
    keep: list[Any]
    remove: list[Any]
    reasons: dict[str, list[str]]


def _apply_policy(
    snapshots: Iterable[Any],
    policy: _Policy | Mapping[str, Any],
    now: datetime | None = None,
    *,
    tz: tzinfo | None = None,
) -> _PolicyResult:
    """Which snapshots a retention policy keeps, with restic's rules (``restic forget``, one group).

    The snapshots are sorted newest first (ties keep their given order). Then, for each snapshot in turn:

    * ``keep_within`` keeps it when its time is after the newest snapshot's time (ignoring snapshots after ``now``)
      minus the duration; a restic duration (``"1y2m"``) is calendar arithmetic in local time;
    * ``keep_last`` keeps it while fewer than N were kept by that rule;
    * ``keep_hourly``/``daily``/``weekly``/``monthly``/``yearly`` keep it when it is the newest of its bucket
      (the hour, day, ISO week, month or year in local time, or in ``tz``) and fewer than N buckets were used, so
      each rule keeps the newest snapshot of each of the last N buckets that have snapshots; a rule that still has
      counts left when it reaches the oldest snapshot keeps that one too (restic >= 0.16).

    A snapshot is kept when any rule keeps it; ``reasons`` maps the id of each kept snapshot to the rules that kept
    it. An empty policy raises ValueError (restic refuses to forget without one).

    Parameters
    ----------
    snapshots : iterable of Snapshot
        Anything with ``.id`` and ``.time`` (an aware datetime).
    policy : _Policy or mapping
        ``{"keep_last": 3, "keep_daily": 7, ...}`` or a validated :class:`_Policy`.
    now : datetime, optional
        The present (default: now); snapshots after it are not "the newest" for ``keep_within``.
    tz : tzinfo, optional
        Time zone of the buckets (default: the local time zone).

    Returns
    -------
    _PolicyResult
        ``(keep, remove, reasons)``; ``keep`` and ``remove`` newest first.

    Examples
    --------
    >>> from datetime import UTC, datetime, timedelta
    >>> from ferrolab.backup import Snapshot, _apply_policy
    >>> t0 = datetime(2024, 5, 1, 22, tzinfo=UTC)
    >>> snaps = [Snapshot(f"{i:064x}", t0 + timedelta(hours=6 * i)) for i in range(6)]  # 4 per day
    >>> keep, remove, reasons = _apply_policy(snaps, {"keep_last": 1, "keep_daily": 2}, tz=UTC)
    >>> [s.time.strftime("%d %H:%M") for s in keep], len(remove)
    (['03 04:00', '02 22:00'], 4)
    >>> reasons[keep[0].id], reasons[keep[1].id]
    (['last snapshot', 'daily snapshot'], ['daily snapshot'])
    """
    if not isinstance(policy, _Policy):
        if not isinstance(policy, Mapping):
            raise TypeError(f"_apply_policy(): argument 'policy' must be a mapping, got {_type_name(policy)}")
        policy = _make_policy("forget", **policy)
    _require_policy(policy)
    ordered = sorted(snapshots, key=lambda s: s.time, reverse=True)  # stable: ties keep their order
    if not ordered:
        return _PolicyResult([], [], {})
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is None:
        now = now.astimezone()
    past = [s.time for s in ordered if s.time < now]
    cutoff = None
    if policy.within:
        cutoff = _cutoff(max(past), policy.within, tz) if past else None
    within_reason = f"within {policy.within}"
    left = {rule: getattr(policy, rule) for rule in _COUNT_RULES}
    last_bucket: dict[str, Any] = dict.fromkeys(_COUNT_RULES)
    keep: list[Any] = []
    remove: list[Any] = []
    reasons: dict[str, list[str]] = {}
    oldest = len(ordered) - 1
    for nr, snap in enumerate(ordered):
        why: list[str] = []
        if policy.within and (cutoff is None or snap.time > cutoff):
            why.append(within_reason)
        local = snap.time.astimezone(tz)
        for rule in _COUNT_RULES:
            if left[rule] <= 0:
                continue
            val = nr if rule == "last" else _bucket(rule, local)
            if val != last_bucket[rule] or nr == oldest:
                last_bucket[rule] = val
                left[rule] -= 1
                why.append("last snapshot" if rule == "last" else f"{rule} snapshot")
        if why:
            keep.append(snap)
            reasons[snap.id] = why
        else:
            remove.append(snap)
    return _PolicyResult(keep, remove, reasons)


def _group_by(func: str, group_by: Any) -> tuple[str, ...]:
    if group_by is None:
        return ()
    if isinstance(group_by, str):
        group_by = [g for g in (x.strip() for x in group_by.split(",")) if g]
    keys = _str_list(func, "group_by", group_by)
    for k in keys:
        if k not in GROUP_BY_KEYS:
            raise ValueError(f"{func}(): argument 'group_by' has {k!r}; expected some of {GROUP_BY_KEYS}")
    return tuple(dict.fromkeys(keys))


def _group_key(snapshot: Snapshot, keys: Sequence[str]) -> tuple[Any, ...]:
    parts: list[Any] = []
    for k in keys:
        if k == "host":
            parts.append(snapshot.hostname)
        elif k == "paths":
            parts.append(tuple(sorted(snapshot.paths)))
        else:
            parts.append(tuple(sorted(snapshot.tags)))
    return tuple(parts)


# --- progress and metrics --------------------------------------------------------------------------------------
class _Bar:
    """A tqdm bar per phase, fed with the native progress dicts."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._phase: str | None = None

    def __call__(self, info: Mapping[str, Any]) -> None:
        phase = str(info.get("phase") or "")
        done = int(info.get("done_bytes") or 0)
        total = int(info.get("total_bytes") or 0)
        if self._bar is None or phase != self._phase:
            self.close()
            from tqdm import tqdm

            self._bar = tqdm(
                total=max(total, done) or None, desc=phase, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, dynamic_ncols=True, disable=False,
            )
            self._phase = phase
        bar = self._bar
        if total and bar.total != max(total, done):
            bar.total = max(total, done)
        if done >= bar.n:
            bar.update(done - bar.n)
        else:
            bar.n = done
            bar.refresh()
        done_files = int(info.get("done_files") or 0)
        total_files = int(info.get("total_files") or 0)
        bar.set_postfix_str(f"{done_files}/{total_files} files" if total_files else f"{done_files} files")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress(func: str, progress: Any) -> tuple[Callable[[dict[str, Any]], None] | None, Callable[[], None]]:
    """``(callback for the native call, close)`` for ``progress=False | True | callable``."""
    if progress is None or progress is False:
        return None, lambda: None
    if progress is True:
        bar = _Bar()
        return bar, bar.close
    if callable(progress):
        return progress, lambda: None
    raise TypeError(f"{func}(): argument 'progress' must be a bool or a callable, got {_type_name(progress)}")


_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)


class _Series(NamedTuple):
    prefix: str
    last_success: Any
    duration: Any
    bytes: Any


_series: _Series | None = None
_series_lock = threading.Lock()
_last_success: dict[str, float] = {}


def _register(cls: Any, name: str, documentation: str, labelnames: list[str], **kwargs: Any) -> Any:
    """A metric on the default registry; when its name is taken, an unexposed one (with a warning) so that
    recording a backup's metrics can never fail the backup."""
    try:
        return cls(name, documentation, labelnames, **kwargs)
    except ValueError as exc:
        import warnings

        warnings.warn(f"ferrolab.backup: cannot register {name!r} ({exc}); backup metrics will not be exposed",
                      RuntimeWarning, stacklevel=4)
        return cls(name, documentation, labelnames, registry=None, **kwargs)


def _metrics() -> _Series:
    """The backup series, created once (again if ``fl.metrics.configure(prefix=...)`` renamed the built-ins)."""
    global _series
    prefix = _core._settings()[1]
    current = _series
    if current is not None and current.prefix == prefix:
        return current
    from . import metrics

    with _series_lock:
        current = _series
        if current is not None and current.prefix == prefix:
            return current
        if current is not None:
            for m in current[1:]:
                try:
                    metrics.REGISTRY.unregister(m)
                except KeyError:  # pragma: no cover - unregistered by the user
                    pass
        created = _Series(
            prefix,
            _register(metrics.Gauge, f"{prefix}_backup_last_success_timestamp_seconds",
                      "Time of the newest successful ferrolab backup (seconds since the epoch).", ["repository"]),
            _register(metrics.Histogram, f"{prefix}_backup_duration_seconds",
                      "Duration of ferrolab backup operations (backup, restore, verify, prune).", ["operation"],
                      buckets=_DURATION_BUCKETS),
            _register(metrics.Counter, f"{prefix}_backup_bytes",
                      "Bytes handled by ferrolab backups: read (file bytes scanned), added (stored in the "
                      "repository), restored.", ["kind"]),
        )
        for kind in ("read", "added", "restored"):  # every series exists from the start, at 0
            created.bytes.labels(kind=kind)
        for operation in ("backup", "restore", "verify", "prune"):
            created.duration.labels(operation=operation)
        for repository, value in _last_success.items():  # carried over a prefix change
            created.last_success.labels(repository=repository).set(value)
        _series = created
        return created


class _Timed:
    """Observes ``ferrolab_backup_duration_seconds{operation}`` when the block ends, failed or not."""

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def __enter__(self) -> _Timed:
        self.start = _time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        _metrics().duration.labels(operation=self.operation).observe(_time.perf_counter() - self.start)


def _native_class() -> Any:
    cls = getattr(_core, "BackupRepository", None)
    if cls is None:  # pragma: no cover - only while the native part is being written
        raise NotImplementedError("this build of ferrolab has no native backup support "
                                  "(ferrolab._core.BackupRepository is missing)")
    return cls


# --- the repository --------------------------------------------------------------------------------------------
class Repository:
    """An encrypted, deduplicated backup repository; get one from :meth:`init` or :meth:`open`.

    Examples
    --------
    >>> import pathlib, tempfile, ferrolab as fl
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     repo = fl.backup.Repository.init(pathlib.Path(tmp, "repo"), password="s3cret pass")
    ...     again = fl.backup.Repository.open(pathlib.Path(tmp, "repo"), password="s3cret pass")
    ...     print(again.id == repo.id, len(repo.id), repo.snapshots())
    True 64 []
    """

    __slots__ = ("_native", "_label")

    def __init__(self, native: Any, *, _token: object = None) -> None:
        if _token is not _PRIVATE:
            raise TypeError("Repository() cannot be called directly: use Repository.init() or Repository.open()")
        self._native = native
        self._label = _redact_url(str(native.url))

    @classmethod
    def init(
        cls,
        url: str | os.PathLike[str],
        password: str | bytes | None = None,
        key_file: str | os.PathLike[str] | None = None,
        compression: int = 3,
        *,
        s3: Mapping[str, Any] | None = None,
    ) -> Repository:
        """Create a new, empty repository at ``url``.

        Parameters
        ----------
        url : str or os.PathLike
            A local directory (made absolute; it must not exist or be empty) or ``s3://bucket/prefix``.
        password : str or bytes, optional
            The password (a str is UTF-8 encoded). Give this or ``key_file``; with neither, the environment
            variable ``FERROLAB_PASSWORD`` is used, else the first line of the file named by
            ``FERROLAB_PASSWORD_FILE``.
        key_file : str or os.PathLike, optional
            A file whose bytes are the secret (for example 32 random bytes), instead of a password.
        compression : int, default 3
            zstd level, 1 (fastest) to 22 (smallest).
        s3 : dict, optional
            For ``s3://`` URLs: any of ``endpoint``, ``region``, ``access_key_id``, ``secret_access_key``,
            ``session_token`` (str) and ``allow_http`` (bool); what is missing comes from the ``AWS_*`` variables.

        Returns
        -------
        Repository

        Raises
        ------
        ValueError
            No password and no key file, both, an empty one, ``compression`` outside 1..22, a bad ``s3`` key.
        TypeError
            An argument has the wrong type.
        BackupError
            The repository cannot be created (for example a repository already exists there).

        Examples
        --------
        >>> import os, pathlib, tempfile, ferrolab as fl
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     key = pathlib.Path(tmp, "backup.key")
        ...     _ = key.write_bytes(os.urandom(32))
        ...     repo = fl.backup.Repository.init(pathlib.Path(tmp, "repo"), key_file=key, compression=9)
        ...     print(repo.url == str(pathlib.Path(tmp, "repo")))
        True
        """
        target = _local_url("init", url)
        if isinstance(compression, bool) or not isinstance(compression, int):
            raise TypeError(f"init(): argument 'compression' must be an int, got {_type_name(compression)}")
        if not 1 <= compression <= 22:
            raise ValueError(f"init(): argument 'compression' is {compression}; expected a zstd level in 1..22")
        s3_opts = _s3_options("init", s3, target)
        secret, key = _credentials("init", password, key_file)
        native = _native_class().init(target, password=secret, key_file=key, compression=compression, s3=s3_opts)
        return cls(native, _token=_PRIVATE)

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str],
        password: str | bytes | None = None,
        key_file: str | os.PathLike[str] | None = None,
        *,
        s3: Mapping[str, Any] | None = None,
    ) -> Repository:
        """Open an existing repository; the arguments are those of :meth:`init`.

        Raises
        ------
        RepositoryNotFound
            There is no repository at ``url``.
        WrongPassword
            The password or key file does not unlock it.

        Examples
        --------
        >>> import pathlib, tempfile, ferrolab as fl
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = fl.backup.Repository.init(pathlib.Path(tmp, "repo"), password="right one")
        ...     try:
        ...         fl.backup.Repository.open(pathlib.Path(tmp, "repo"), password="wrong one")
        ...     except fl.backup.WrongPassword as e:
        ...         print(type(e).__name__, isinstance(e, fl.FerrolabError))
        WrongPassword True
        """
        target = _local_url("open", url)
        s3_opts = _s3_options("open", s3, target)
        secret, key = _credentials("open", password, key_file)
        native = _native_class().open(target, password=secret, key_file=key, s3=s3_opts)
        return cls(native, _token=_PRIVATE)

    @property
    def url(self) -> str:
        """Where the repository is (a local path is absolute)."""
        return str(self._native.url)

    @property
    def id(self) -> str:
        """The repository id (hex), fixed at :meth:`init`."""
        return str(self._native.id)

    def __repr__(self) -> str:
        return f"<ferrolab.backup.Repository {self._label!r}>"

    def backup(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        tags: str | Iterable[str] = (),
        exclude: str | Iterable[str] = (),
        progress: bool | Callable[[dict[str, Any]], None] = False,
        *,
        host: str | None = None,
        time: datetime | float | None = None,
    ) -> Snapshot:
        """Store a new snapshot of ``paths``.

        Files unchanged since the previous snapshot of the same paths and host (same size, modification time and
        inode) are not read again; new data is chunked, deduplicated against everything in the repository,
        compressed and encrypted.

        Parameters
        ----------
        paths : path or iterable of paths
            Files and directories (made absolute). Every one must exist: otherwise FileNotFoundError is raised
            before anything is written.
        tags : str or iterable of str, optional
            Labels for :meth:`snapshots` and :meth:`forget` (no commas).
        exclude : str or iterable of str, optional
            Glob patterns of paths to leave out (``"*.tmp"``, ``"**/__pycache__"``, ``"/srv/data/cache"``).
        progress : bool or callable, optional
            ``True`` draws a progress bar on stderr; a callable gets dicts
            ``{"phase", "done_bytes", "total_bytes", "done_files", "total_files"}`` (totals 0 while unknown), at
            most about 10 per second.
        host : str, optional
            Host name recorded in the snapshot (default: this machine's).
        time : datetime or float, optional
            Time recorded in the snapshot (default: now), e.g. to import older data; a naive datetime is local.

        Returns
        -------
        Snapshot

        Examples
        --------
        >>> import pathlib, tempfile, ferrolab as fl
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     data = pathlib.Path(tmp, "data")
        ...     (data / "logs").mkdir(parents=True)
        ...     _ = (data / "model.bin").write_bytes(bytes(range(256)) * 4096)
        ...     _ = (data / "logs" / "run.log").write_text("epoch 1\\n")
        ...     repo = fl.backup.Repository.init(pathlib.Path(tmp, "repo"), password="pw for docs")
        ...     first = repo.backup(data, tags="nightly", exclude=["*.log"])
        ...     second = repo.backup(data, tags="nightly", exclude=["*.log"])  # nothing changed
        ...     print(first.files, first.bytes, second.parent == first.id, second.added_bytes < 1024)
        1 1048576 True True
        """
        path_list = _paths("backup", paths)
        tag_list = _tags("backup", tags)
        patterns = _str_list("backup", "exclude", exclude)
        if host is not None and not isinstance(host, str):
            raise TypeError(f"backup(): argument 'host' must be a str or None, got {_type_name(host)}")
        if host is not None and not host.strip():
            raise ValueError("backup(): argument 'host' is empty")
        when = None if time is None else _timestamp("backup", "time", time)
        callback, close = _progress("backup", progress)
        try:
            with _Timed("backup"):
                raw = self._native.backup(path_list, tags=tag_list, exclude=patterns, host=host, time=when,
                                          progress=callback)
        finally:
            close()
        snap = Snapshot._from_native(raw)
        series = _metrics()
        series.bytes.labels(kind="read").inc(snap.bytes)
        series.bytes.labels(kind="added").inc(snap.added_bytes)
        with _series_lock:
            value = max(_last_success.get(self._label, -math.inf), snap.time.timestamp())
            _last_success[self._label] = value
        series.last_success.labels(repository=self._label).set(value)
        return snap

    def snapshots(self, tags: str | Iterable[str] | None = None) -> list[Snapshot]:
        """The snapshots, oldest first (by time, then id).

        Parameters
        ----------
        tags : str or iterable of str, optional
            Only snapshots that have all of these tags.

        Examples
        --------
        >>> import pathlib, tempfile, ferrolab as fl
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     data = pathlib.Path(tmp, "notes.txt")
        ...     _ = data.write_text("v1")
        ...     repo = fl.backup.Repository.init(pathlib.Path(tmp, "repo"), password="pw for docs")
        ...     a = repo.backup(data, tags=["daily"], time=1_700_000_000)
        ...     b = repo.backup(data, tags=["daily", "release"], time=1_700_086_400)
        ...     print([s.id for s in repo.snapshots()] == [a.id, b.id], repo.snapshots("release") == [b])
        True True
        """
        wanted = set(_str_list("snapshots", "tags", tags))
        snaps = [Snapshot._from_native(d) for d in self._native.snapshots()]
        if wanted:
            snaps = [s for s in snaps if wanted.issubset(s.tags)]
        snaps.sort(key=lambda s: (s.time, s.id))
        return snaps

    def restore(
        self,
        snapshot: str | Snapshot = "latest",
        target: str | os.PathLike[str] | None = None,
        include: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
        at: str | datetime | None = None,
        progress: bool | Callable[[dict[str, Any]], None] = False,
    ) -> dict[str, int]:
        """Restore a snapshot (or part of it) into ``target``.

        Parameters
        ----------
        snapshot : str or Snapshot, default "latest"
            ``"latest"``, a full id, a unique prefix of at least 4 hex digits, or a :class:`Snapshot`.
        target : path
            Directory to restore into (created if needed). Required.
        include : path or iterable of paths, optional
            Restore only these files or subtrees: absolute original paths, or paths relative to the snapshot's root
            (its backed-up directory; the common directory of its paths when there are several).
        at : str or datetime, optional
            Restore the newest snapshot taken at or before this time (ISO 8601 such as ``"2024-05-01T18:00"``;
            without a UTC offset it is local time) instead of naming one.
        progress : bool or callable, optional
            As in :meth:`backup`.

        Returns
        -------
        dict
            ``{"files", "dirs", "symlinks", "bytes"}`` restored.

        Raises
        ------
        ValueError
            No such snapshot, an ambiguous prefix, or no snapshot at or before ``at``.

        Examples
        --------
        >>> import pathlib, tempfile, ferrolab as fl
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     data = pathlib.Path(tmp, "data")
        ...     (data / "a").mkdir(parents=True)
        ...     _ = (data / "a" / "keep.txt").write_text("v1")
        ...     _ = (data / "other.txt").write_text("x")
        ...     repo = fl.backup.Repository.init(pathlib.Path(tmp, "repo"), password="pw for docs")
        ...     old = repo.backup(data, time=1_700_000_000)
        ...     _ = (data / "a" / "keep.txt").write_text("v2")
        ...     new = repo.backup(data)
        ...     counts = repo.restore(target=pathlib.Path(tmp, "out"), include="a", at="2023-11-15T00:00:00Z")
        ...     print(counts["files"], [p.read_text() for p in pathlib.Path(tmp, "out").rglob("*.txt")])
        1 ['v1']
        """
        if target is None:
            raise TypeError("restore(): missing required argument 'target'")
        if not isinstance(target, str | os.PathLike):
            raise TypeError(f"restore(): argument 'target' must be a path, got {_type_name(target)}")
        target_path = os.path.abspath(os.fspath(target))
        if isinstance(snapshot, Snapshot) and at is None:
            snap = snapshot  # already resolved: no need to list the snapshots again
        else:
            snap = _select_snapshot("restore", self.snapshots(), snapshot, at)
        wanted = _include_paths("restore", snap, include)
        callback, close = _progress("restore", progress)
        try:
            with _Timed("restore"):
                counts = dict(self._native.restore(snap.id, target_path, include=wanted, progress=callback))
        finally:
            close()
        _metrics().bytes.labels(kind="restored").inc(int(counts.get("bytes", 0)))
        return counts

    def verify(
        self,
        read_data: bool = True,
        progress: bool | Callable[[dict[str, Any]], None] = False,
        expect_latest: str | None = None,
    ) -> VerifyReport:
        """Check the repository: its structure, and with ``read_data`` every byte of every pack.

        Damage does not raise: it is listed in the report (``bool(report)`` is False). Nothing is deleted or
        repaired.

        Parameters
        ----------
        read_data : bool, default True
            Read and authenticate all data; ``False`` checks only the metadata (snapshots, indexes, that every
            referenced blob is indexed and every pack exists with the size its index gives), which is much
            faster.
        progress : bool or callable, optional
            As in :meth:`backup`.
        expect_latest : str, optional
            The full id of the snapshot you recorded as the newest (e.g. after the last backup). The report
            names it as damaged when it is missing or another snapshot is newer: someone who can write the
            repository but has no key cannot forge snapshots, but can delete the newest ones or roll the
            repository back, and only a list kept elsewhere shows that.
            As in :meth:`backup`.

        Examples
        --------
        >>> import pathlib, tempfile, ferrolab as fl
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     data = pathlib.Path(tmp, "notes.txt")
        ...     _ = data.write_text("important")
        ...     repo = fl.backup.Repository.init(pathlib.Path(tmp, "repo"), password="pw for docs")
        ...     _ = repo.backup(data)
        ...     report = repo.verify()
        ...     print(report.ok, report.errors, report.snapshots)
        True [] 1
        """
        if not isinstance(read_data, bool):
            raise TypeError(f"verify(): argument 'read_data' must be a bool, got {_type_name(read_data)}")
        if expect_latest is not None:
            if not isinstance(expect_latest, str):
                raise TypeError(f"verify(): argument 'expect_latest' must be a str, got {_type_name(expect_latest)}")
            if len(expect_latest) != 64 or any(c not in "0123456789abcdef" for c in expect_latest):
                raise ValueError(f"verify(): argument 'expect_latest' is {expect_latest!r}; expected a full "
                                 "snapshot id (64 lower-case hex digits)")
        callback, close = _progress("verify", progress)
        try:
            with _Timed("verify"):
                raw = self._native.verify(read_data=read_data, expect_latest=expect_latest, progress=callback)
        finally:
            close()
        errors = [VerifyError(str(e.get("item", "")), str(e.get("kind", "")), str(e.get("message", "")))
                  for e in raw.get("errors") or ()]
        return VerifyReport(
            ok=bool(raw.get("ok")) and not errors,
            errors=errors,
            snapshots=int(raw.get("snapshots") or 0),
            packs=int(raw.get("packs") or 0),
            blobs=int(raw.get("blobs") or 0),
            bytes_read=int(raw.get("bytes_read") or 0),
        )

    def forget(
        self,
        keep_last: int | None = None,
        keep_hourly: int | None = None,
        keep_daily: int | None = None,
        keep_weekly: int | None = None,
        keep_monthly: int | None = None,
        keep_yearly: int | None = None,
        keep_within: str | timedelta | float | None = None,
        dry_run: bool = False,
        *,
        tags: str | Iterable[str] | None = None,
        group_by: str | Iterable[str] | None = ("host", "paths"),
    ) -> ForgetResult:
        """Remove the snapshots that a retention policy does not keep, with restic's rules.

        Snapshots are grouped (by default by host and paths, like ``restic forget``) and the policy is applied to
        each group: ``keep_last=N`` keeps the N newest; ``keep_hourly``/``daily``/``weekly``/``monthly``/``yearly=N``
        keep the newest snapshot of each of the last N hours, days, ISO weeks, months or years (local time) that
        have snapshots (and, while counts are left, the oldest snapshot); ``keep_within`` keeps every snapshot
        taken within that duration before the group's newest one. A snapshot is kept when any rule keeps it.
        Only the snapshot objects are deleted; :meth:`prune` then frees the data nothing uses any more.

        Parameters
        ----------
        keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly : int, optional
            Counts >= 0 (0 is the same as None).
        keep_within : str, timedelta or float, optional
            restic's duration syntax (``"2y5m7d3h"``: years, months, days, hours), a ``timedelta``, or seconds.
        dry_run : bool, default False
            Compute and return the result, delete nothing.
        tags : str or iterable of str, optional
            Consider only snapshots with all these tags (the others are kept and not reported).
        group_by : str or iterable of str or None, default ("host", "paths")
            Any of ``"host"``, ``"paths"``, ``"tags"`` (or ``"host,paths"``); None applies the policy to all
            snapshots together.

        Returns
        -------
        ForgetResult
            ``keep`` and ``remove`` (lists of :class:`Snapshot`, newest first) and ``reasons`` (why each was kept).

        Raises
        ------
        ValueError
            No rule given (restic refuses to forget everything), a negative count or a bad duration.

        Examples
        --------
        >>> import pathlib, tempfile, ferrolab as fl
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     data = pathlib.Path(tmp, "notes.txt")
        ...     _ = data.write_text("v1")
        ...     repo = fl.backup.Repository.init(pathlib.Path(tmp, "repo"), password="pw for docs")
        ...     day = 86_400
        ...     for i in range(5):
        ...         _ = repo.backup(data, time=1_700_000_000 + i * day)
        ...     plan = repo.forget(keep_last=2, dry_run=True)
        ...     print(len(plan.keep), len(plan.remove), len(repo.snapshots()))
        ...     done = repo.forget(keep_last=2)
        ...     print(len(repo.snapshots()), done.reasons[done.keep[0].id])
        2 3 5
        2 ['last snapshot']
        """
        policy = _make_policy(
            "forget", keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily, keep_weekly=keep_weekly,
            keep_monthly=keep_monthly, keep_yearly=keep_yearly, keep_within=keep_within,
        )
        _require_policy(policy)
        if not isinstance(dry_run, bool):
            raise TypeError(f"forget(): argument 'dry_run' must be a bool, got {_type_name(dry_run)}")
        keys = _group_by("forget", group_by)
        groups: dict[tuple[Any, ...], list[Snapshot]] = {}
        for snap in self.snapshots(tags):
            groups.setdefault(_group_key(snap, keys), []).append(snap)
        now = datetime.now(UTC)
        keep: list[Snapshot] = []
        remove: list[Snapshot] = []
        reasons: dict[str, list[str]] = {}
        for group in groups.values():
            result = _apply_policy(group, policy, now)
            keep += result.keep
            remove += result.remove
            reasons.update(result.reasons)
        keep.sort(key=lambda s: (s.time, s.id), reverse=True)
        remove.sort(key=lambda s: (s.time, s.id), reverse=True)
        if remove and not dry_run:
            self._native.forget([s.id for s in remove])
        return ForgetResult(keep=keep, remove=remove, reasons=reasons, dry_run=dry_run)

    def prune(self, progress: bool | Callable[[dict[str, Any]], None] = False) -> dict[str, int]:
        """Delete the data that no snapshot references any more (after :meth:`forget`).

        Packs that hold only unused data are deleted; packs that are partly used are rewritten without it.

        Returns
        -------
        dict
            ``{"packs_deleted", "packs_rewritten", "blobs_removed", "bytes_freed"}``.

        Examples
        --------
        >>> import pathlib, tempfile, ferrolab as fl
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     data = pathlib.Path(tmp, "data")
        ...     data.mkdir()
        ...     _ = (data / "big.bin").write_bytes(bytes(range(256)) * 40_000)
        ...     repo = fl.backup.Repository.init(pathlib.Path(tmp, "repo"), password="pw for docs")
        ...     _ = repo.backup(data)
        ...     (data / "big.bin").unlink()
        ...     _ = repo.backup(data)
        ...     _ = repo.forget(keep_last=1)
        ...     print(repo.prune()["bytes_freed"] > 0)
        True
        """
        callback, close = _progress("prune", progress)
        try:
            with _Timed("prune"):
                result = dict(self._native.prune(progress=callback))
        finally:
            close()
        return result

    def unlock(self) -> int:
        """Remove stale locks (left by processes that died) and return how many were removed.

        Examples
        --------
        >>> import pathlib, tempfile, ferrolab as fl
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     repo = fl.backup.Repository.init(pathlib.Path(tmp, "repo"), password="pw for docs")
        ...     print(repo.unlock())
        0
        """
        return int(self._native.unlock())
