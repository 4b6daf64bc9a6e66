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
import logging
import math
import os
import warnings as _warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import _core

# The checks, the retention policy, the progress bars and the metrics live in private modules; the helpers that
# the CLI, the tests and the doctests use are re-exported here (``from ferrolab.backup import _parse_at``):
# ``_args`` (argument checks), ``_policy`` (retention), ``_bars`` (progress bars), ``_series`` (metrics).
from ._args import _TIME_MAX as _TIME_MAX
from ._args import _TIME_MIN as _TIME_MIN
from ._args import S3_KEYS as S3_KEYS
from ._args import _credentials as _credentials
from ._args import _damaged_text as _damaged_text
from ._args import _include_paths as _include_paths
from ._args import _local_path as _local_path
from ._args import _local_url as _local_url
from ._args import _native_s3 as _native_s3
from ._args import _parse_at as _parse_at
from ._args import _paths as _paths
from ._args import _read_first_line as _read_first_line
from ._args import _redact_url as _redact_url
from ._args import _s3_options as _s3_options
from ._args import _select_snapshot as _select_snapshot
from ._args import _snapshot_timestamp as _snapshot_timestamp
from ._args import _str_list as _str_list
from ._args import _tags as _tags
from ._args import _timestamp as _timestamp
from ._args import _type_name as _type_name
from ._bars import _Bar as _Bar
from ._bars import _progress as _progress
from ._policy import GROUP_BY_KEYS as GROUP_BY_KEYS
from ._policy import _apply_policy as _apply_policy
from ._policy import _Duration as _Duration
from ._policy import _group_by as _group_by
from ._policy import _group_key as _group_key
from ._policy import _make_policy as _make_policy
from ._policy import _parse_duration as _parse_duration
from ._policy import _Policy as _Policy
from ._policy import _require_policy as _require_policy
from ._series import _last_success as _last_success
from ._series import _metrics as _metrics
from ._series import _record_backup as _record_backup
from ._series import _Timed as _Timed

__all__ = ["ForgetResult", "Repository", "Snapshot", "VerifyError", "VerifyReport"]

try:  # the native backup errors (absent from builds made before the backup core)
    from .._core import BackupError, CorruptionError, LockedError, RepositoryNotFound, WrongPassword
except ImportError:  # pragma: no cover - only while the native part is being written
    pass
else:
    __all__ += ["BackupError", "CorruptionError", "LockedError", "RepositoryNotFound", "WrongPassword"]

_PRIVATE = object()
_log = logging.getLogger(__name__)  # "ferrolab.backup", where the native backup events go too


# --- snapshots and reports -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One backup: which paths, when, from which host, with which tags, and how much data.

    Attributes
    ----------
    id : str
        64 hex digits; :attr:`short_id` is its first 8.
    time : datetime.datetime
        When the backup started (timezone-aware, UTC). This version refuses to write a time outside years 1 to
        9999; an older one wrote it for ``backup(time=<milliseconds>)``, which reads back as milliseconds. Any
        other stored time outside that range (crafted or damaged) reads as 0001-01-02 UTC, the oldest, so that it
        never becomes ``"latest"`` or keeps a stale backup looking fresh; a warning is logged for both.
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
    warnings : tuple of str
        What the backup could not store, one message per item (``"/srv/data/secret.key: Permission denied (os
        error 13)"``, a directory that could not be listed, a FIFO, socket or device, which are not backed up):
        the snapshot lacks those items. Stored in the snapshot, so snapshots read back by
        :meth:`Repository.snapshots` carry them too; :meth:`Repository.backup` also logs each one on the
        ``ferrolab.backup`` logger (level WARNING), and ``ferrolab backup create`` prints them and exits 3.
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
    warnings: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    @property
    def short_id(self) -> str:
        """The first 8 hex digits of :attr:`id` (what listings show)."""
        return self.id[:8]

    @classmethod
    def _from_native(cls, d: Mapping[str, Any]) -> Snapshot:
        sid = str(d["id"])
        return cls(
            id=sid,
            time=_snapshot_time(sid, d.get("time")),
            paths=tuple(d.get("paths") or ()),
            tags=tuple(d.get("tags") or ()),
            hostname=str(d.get("hostname") or ""),
            files=int(d.get("files") or 0),
            dirs=int(d.get("dirs") or 0),
            bytes=int(d.get("bytes") or 0),
            added_bytes=int(d.get("added_bytes") or 0),
            parent=d.get("parent") or None,
            duration=float(d.get("duration") or 0.0),
            warnings=tuple(str(w) for w in d.get("warnings") or ()),
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
        d["warnings"] = list(self.warnings)
        d["short_id"] = self.short_id
        return d


def _tagged(snaps: list[Snapshot], tags: Iterable[str]) -> list[Snapshot]:
    """The snapshots that have all of ``tags`` (all of them when there are none)."""
    wanted = set(tags)
    return [s for s in snaps if wanted.issubset(s.tags)]


def _snapshot_time(sid: str, value: Any) -> datetime:
    """A stored snapshot time as an aware datetime (see :attr:`Snapshot.time`): a time beyond year 9999 that is one
    in milliseconds is read as milliseconds; any other time outside ``_TIME_MIN.._TIME_MAX`` reads as ``_TIME_MIN``.

    Examples
    --------
    >>> from ferrolab.backup import _snapshot_time
    >>> _snapshot_time("ab" * 32, 1_700_000_000).isoformat(), _snapshot_time("ab" * 32, 1_700_000_000_000).isoformat()
    ('2023-11-14T22:13:20+00:00', '2023-11-14T22:13:20+00:00')
    >>> _snapshot_time("ab" * 32, 1e20).year
    1
    """
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    lo, hi = _TIME_MIN.timestamp(), _TIME_MAX.timestamp()
    if lo <= t <= hi:
        return datetime.fromtimestamp(t, tz=UTC)
    if hi < t and lo <= t / 1000 <= hi:
        # what older versions stored for backup(time=time.time() * 1000)
        shown = datetime.fromtimestamp(t / 1000, tz=UTC)
        _log.warning("snapshot %s records the time %r, beyond year 9999; read as milliseconds: %s", sid[:8], value,
                     shown.isoformat(), extra={"snapshot": sid})
        return shown
    # never the newest: a bogus time must not become "latest", keep the snapshot from forget or a stale backup fresh
    _log.warning("snapshot %s records the time %r, outside years 1 to 9999; it is shown as %s (the oldest)", sid[:8],
                 value, _TIME_MIN.isoformat(), extra={"snapshot": sid})
    return _TIME_MIN


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
            A local directory (made absolute; it must not exist or be empty), ``file:///path`` or
            ``s3://bucket/prefix``; another scheme (``ftp://``...) raises ValueError.
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
            No password and no key file, both, an empty one, ``compression`` outside 1..22, a bad ``s3`` key, a URL
            with an unsupported scheme or a NUL character.
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
        s3_opts = _native_s3(_s3_options("init", s3, target))
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
            There is no repository at ``url`` (nothing there, or a file that is not a directory).
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
        s3_opts = _native_s3(_s3_options("open", s3, target))
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
            Glob patterns of paths to leave out, matched as restic matches them: a pattern without ``/`` matches a
            name at any depth (``"*.tmp"``, ``"__pycache__"``), an absolute one the whole path
            (``"/srv/data/cache"``), a relative one with ``/`` the last components at any depth (``"cache/*.tmp"``
            leaves out ``/srv/app/cache/x.tmp``). ``*`` and ``?`` do not match ``/``, ``**`` matches anything,
            ``[...]`` is a class. An excluded directory is left out with all it holds. Paths inside another given
            path are covered by it (stored once).
        progress : bool or callable, optional
            ``True`` draws a progress bar on stderr; a callable gets dicts
            ``{"phase", "done_bytes", "total_bytes", "done_files", "total_files"}`` (totals 0 while unknown), at
            most about 10 per second.
        host : str, optional
            Host name recorded in the snapshot (default: this machine's).
        time : datetime or float, optional
            Time recorded in the snapshot (default: now), e.g. to import older data; a naive datetime is local.
            Seconds since the epoch (not milliseconds); a time outside years 1 to 9999 (strictly 0001-01-02 to
            9999-12-30 UTC) raises ValueError before anything is written.

        Returns
        -------
        Snapshot
            Items that could not be read (permission denied, a FIFO...) are left out of it, each named in
            :attr:`Snapshot.warnings` and logged as a warning on the ``ferrolab.backup`` logger; the backup
            does not fail for them.

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
        when = None if time is None else _snapshot_timestamp("backup", "time", time)
        callback, close = _progress("backup", progress)
        try:
            with _Timed("backup"):
                raw = self._native.backup(path_list, tags=tag_list, exclude=patterns, host=host, time=when,
                                          progress=callback)
        finally:
            close()
        snap = Snapshot._from_native(raw)
        for warning in snap.warnings:
            _log.warning("backup %s of %s: not backed up: %s", snap.short_id, self._label, warning,
                         extra={"snapshot": snap.id, "repository": self._label})
        _record_backup(self._label, snap.bytes, snap.added_bytes, snap.time.timestamp())
        return snap

    def _load(self) -> tuple[list[Snapshot], list[tuple[str, str]]]:
        """``(snapshots, damaged)``: the readable snapshots, oldest first, and ``(id, why)`` of each snapshot object
        that cannot be decrypted or decoded (sorted by id); nothing reported."""
        raw, bad = self._native.load_snapshots()
        snaps = [Snapshot._from_native(d) for d in raw]
        snaps.sort(key=lambda s: (s.time, s.id))
        return snaps, sorted((str(name), str(why).removeprefix(f"snapshot {name}: ")) for name, why in bad)

    def _report_damaged(self, damaged: list[tuple[str, str]], stacklevel: int = 3) -> None:
        """Log an error for each damaged snapshot object and warn (RuntimeWarning) about them all."""
        for name, why in damaged:
            _log.error("snapshot object %s/snapshots/%s cannot be read: %s", self._label, name, why,
                       extra={"snapshot": name, "repository": self._label})
        _warnings.warn(f"ferrolab.backup: {self._label}: {_damaged_text(damaged)} (left out; run verify() for "
                       "details)", RuntimeWarning, stacklevel=stacklevel)

    def snapshots(self, tags: str | Iterable[str] | None = None) -> list[Snapshot]:
        """The snapshots, oldest first (by time, then id).

        A snapshot object that cannot be decrypted or decoded (damaged, or not written with this repository's key)
        is not listed, but not hidden either: each one is logged as an error on the ``ferrolab.backup`` logger
        (naming its object ``snapshots/<id>`` and why) and a :class:`RuntimeWarning` names them all.
        :meth:`restore` then refuses ``"latest"`` and ``at`` (the damaged one may be the one meant).

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
        return self._snapshots("snapshots", tags)

    def _snapshots(self, func: str, tags: str | Iterable[str] | None) -> list[Snapshot]:
        wanted = _str_list(func, "tags", tags)
        snaps, damaged = self._load()
        if damaged:
            self._report_damaged(damaged, stacklevel=4)
        return _tagged(snaps, wanted)

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
            No such snapshot, an ambiguous prefix, no snapshot at or before ``at``, a NUL character in ``target``.
        CorruptionError
            ``snapshot`` names a snapshot object that cannot be read; or ``"latest"`` or ``at`` is asked for while
            any snapshot object cannot be read (it may be the one meant: rather than silently restoring an older
            one, this names the damaged ones; pass an explicit snapshot id to restore another).

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
        if "\0" in str(target_path):
            raise ValueError(f"restore(): argument 'target' contains a NUL character: {target_path!r}")
        if isinstance(snapshot, Snapshot) and at is None:
            snap = snapshot  # already resolved: no need to list the snapshots again
        else:
            snaps, damaged = self._load()
            snap = _select_snapshot("restore", snaps, snapshot, at, damaged)  # CorruptionError before warning
            if damaged:
                self._report_damaged(damaged)
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
        Only the snapshot objects are deleted; :meth:`prune` then frees the data nothing uses any more. Snapshot
        objects that cannot be read are reported as by :meth:`snapshots` and neither kept nor removed.

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
        tag_list = _str_list("forget", "tags", tags)
        groups: dict[tuple[Any, ...], list[Snapshot]] = {}
        for snap in self._snapshots("forget", tag_list):
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
