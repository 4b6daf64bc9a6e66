"""Argument checks of :mod:`ferrolab.backup`: credentials, URLs, ``s3`` options, paths, tags, timestamps, ``at``,
snapshot selection and ``include`` paths.

Every check raises :class:`TypeError` or :class:`ValueError` (:class:`FileNotFoundError` for a missing path) with a
message that starts with the public function's name (``"restore(): argument 'at' ..."``), before anything native
runs. The helpers are re-exported by :mod:`ferrolab.backup` (tests, doctests and the CLI use them from there).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import Snapshot

#: Keys accepted in ``s3={...}`` (values are str, ``allow_http`` a bool); missing ones come from ``AWS_*``.
S3_KEYS = ("endpoint", "region", "access_key_id", "secret_access_key", "session_token", "allow_http")

_HEX = re.compile(r"[0-9a-f]+")
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")


def _type_name(x: Any) -> str:
    return type(x).__name__


#: URL schemes a repository can have (besides a plain local path).
_SCHEMES = ("s3", "file")


def _local_url(func: str, url: Any) -> str:
    """``url`` as a str: ``s3://`` and ``file://`` URLs unchanged (the scheme lower-cased), local paths made
    absolute; ValueError for another scheme (which would otherwise become a local directory named ``ftp:``) or a
    NUL character.

    Examples
    --------
    >>> from ferrolab.backup import _local_url
    >>> _local_url("init", "S3://bucket/prefix"), _local_url("open", "/srv/backups")
    ('s3://bucket/prefix', '/srv/backups')
    >>> try:
    ...     _local_url("init", "ftp://host/x")
    ... except ValueError as e:
    ...     print(str(e)[:55])
    init(): argument 'url' has the unsupported scheme 'ftp:
    """
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str):
        raise TypeError(f"{func}(): argument 'url' must be a str or os.PathLike, got {_type_name(url)}")
    if not url:
        raise ValueError(f"{func}(): argument 'url' is empty")
    if "\0" in url:
        raise ValueError(f"{func}(): argument 'url' contains a NUL character: {url!r}")
    m = _SCHEME.match(url)
    if m:
        scheme = m.group()[:-3]
        if scheme.lower() not in _SCHEMES:
            raise ValueError(f"{func}(): argument 'url' has the unsupported scheme '{scheme}://'; expected a local "
                             "path, file:///path or s3://bucket/prefix")
        url = scheme.lower() + url[len(scheme):]
        if url.startswith("file://") and not url[len("file://"):]:
            raise ValueError(f"{func}(): argument 'url' is 'file://' without a path")
        return url
    return os.path.abspath(url)


def _local_path(url: str) -> str | None:
    """The directory of a local repository URL (from :func:`_local_url`); None for ``s3://``."""
    if url.startswith("s3://"):
        return None
    return url.removeprefix("file://")


def _redact_url(url: str) -> str:
    """``url`` without credentials, query or fragment (for metric labels and reprs).

    The credentials end at the authority's last ``@``. A password holding an unencoded ``/``, ``?`` or ``#`` ends the
    authority early (``s3://KEY:ab/cd@bucket`` parses as host ``KEY`` with port ``ab``; AWS secret keys hold ``/``):
    when the authority has a ``:`` and an ``@`` follows, everything up to that ``@`` is taken for credentials too,
    except in an ``http(s)`` URL whose port is a number.

    Examples
    --------
    >>> from ferrolab.backup import _redact_url
    >>> _redact_url("s3://AKIA:secret@bucket/prefix?token=x"), _redact_url("/srv/backups")
    ('s3://bucket/prefix', '/srv/backups')
    >>> _redact_url("s3://AKIA:se/cret@bucket/pre@fix")
    's3://bucket/pre@fix'
    """
    if not _SCHEME.match(url):
        return url
    scheme, rest = url.split("://", 1)
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" in authority:
        rest = rest[authority.rindex("@") + 1 :]
    elif ":" in authority and "@" in rest[end:]:
        port = authority.rpartition(":")[2]
        if not (scheme.lower() in ("http", "https") and port.isdigit()):
            rest = rest[rest.index("@", end) + 1 :]
    return f"{scheme}://{re.split(r'[?#]', rest, maxsplit=1)[0]}"


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


def _native_s3(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Checked ``s3`` options (from :func:`_s3_options`) as the native side takes them: every key of
    :data:`S3_KEYS`, None where unset (it converts them field by field and checks nothing itself).

    Examples
    --------
    >>> from ferrolab.backup import _native_s3
    >>> _native_s3({"endpoint": "http://127.0.0.1:8333"})["region"] is None, _native_s3(None)
    (True, None)
    """
    if options is None:
        return None
    return {key: options.get(key) for key in S3_KEYS}


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
        try:
            return value.timestamp()
        except (OverflowError, ValueError, OSError):  # a naive datetime.min/max has no local time
            raise ValueError(f"{func}(): argument '{arg}' is {value!r}, which has no time in seconds since the "
                             "epoch") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{func}(): argument '{arg}' must be a datetime or a number, got {_type_name(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{func}(): argument '{arg}' is {value!r}; expected a finite number")
    return float(value)


#: The times a snapshot may record: years 1 to 9999 with a day to spare at each end, so that every one can be shown
#: in any time zone. ``backup(time=...)`` refuses others; a stored time outside (written by an older version, or
#: crafted) reads as milliseconds when it is one, else as ``_TIME_MIN`` (see :attr:`Snapshot.time`).
_TIME_MIN = datetime(1, 1, 2, tzinfo=UTC)
_TIME_MAX = datetime(9999, 12, 30, 23, 59, 59, tzinfo=UTC)


def _snapshot_timestamp(func: str, arg: str, value: Any) -> float:
    """:func:`_timestamp`, refusing a time outside ``_TIME_MIN..._TIME_MAX`` (``datetime`` could not show it).

    Examples
    --------
    >>> from ferrolab.backup._args import _snapshot_timestamp
    >>> _snapshot_timestamp("backup", "time", 1_700_000_000)
    1700000000.0
    >>> try:
    ...     _snapshot_timestamp("backup", "time", 1_700_000_000_000)
    ... except ValueError as e:
    ...     print(e)  # doctest: +ELLIPSIS
    backup(): argument 'time' is 1700000000000; expected ... from 0001-01-02 to 9999-12-30 ... (milliseconds? ...)
    """
    when = _timestamp(func, arg, value)
    lo, hi = _TIME_MIN.timestamp(), _TIME_MAX.timestamp()
    if not lo <= when <= hi:
        hint = " (milliseconds? it takes seconds)" if lo <= when / 1000 <= hi else ""
        raise ValueError(f"{func}(): argument '{arg}' is {value!r}; expected a time from {_TIME_MIN.date()} to "
                         f"{_TIME_MAX.date()} (UTC): seconds since the epoch from {lo:.0f} to {hi:.0f}{hint}")
    return when


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


def _select_snapshot(
    func: str,
    snapshots: Sequence[Snapshot],
    spec: Any = "latest",
    at: Any = None,
    damaged: Sequence[tuple[str, str]] = (),
) -> Snapshot:
    """The snapshot that ``spec`` (``"latest"``, an id, a unique id prefix or a Snapshot) or ``at`` names.

    ``damaged`` lists ``(id, why)`` of the snapshot objects that cannot be read: with any, ``"latest"`` and ``at``
    raise :class:`CorruptionError` (a damaged snapshot may be the one meant: the newest readable one is not
    silently taken instead), and so does an id or prefix that names a damaged snapshot.

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
    from . import CorruptionError, Snapshot  # at call time: the package has finished loading

    ordered = sorted(snapshots, key=lambda s: (s.time, s.id))
    if at is not None:
        if not (spec is None or spec == "latest"):
            raise ValueError(f"{func}(): give either argument 'snapshot' or argument 'at', not both")
        when = _parse_at(func, at)
        if damaged:
            raise CorruptionError(f"{func}(): cannot tell which snapshot was current at {when.isoformat()}: "
                                  f"{_damaged_text(damaged)}; pass an explicit snapshot id instead of 'at'")
        before = [s for s in ordered if s.time <= when]
        if not before:
            first = f"; the oldest is from {ordered[0].time.astimezone().isoformat()}" if ordered else ""
            raise ValueError(f"{func}(): argument 'at' is {when.isoformat()}: no snapshot at or before it{first}")
        return before[-1]
    if spec is None or spec == "latest":
        if damaged:
            raise CorruptionError(f"{func}(): cannot tell which snapshot is the latest: {_damaged_text(damaged)}; "
                                  "pass an explicit snapshot id instead of 'latest'")
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
    bad = [(name, why) for name, why in damaged if name.startswith(key)]
    if not found and not bad:
        raise ValueError(f"{func}(): argument 'snapshot': no snapshot {spec!r} in the repository")
    if len(found) + len(bad) > 1:
        names = [s.short_id for s in found] + [f"{name[:8]} (damaged)" for name, _ in bad]
        ids = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ValueError(f"{func}(): argument 'snapshot': the prefix {spec!r} is ambiguous ({len(names)} snapshots: "
                         f"{ids})")
    if bad:
        raise CorruptionError(f"{func}(): argument 'snapshot': {_damaged_text(bad)}")
    return found[0]


def _damaged_text(damaged: Sequence[tuple[str, str]]) -> str:
    """What ``(id, why)`` of damaged snapshot objects says, in a message.

    Examples
    --------
    >>> from ferrolab.backup._args import _damaged_text
    >>> _damaged_text([("ab" * 32, "authentication failed")])
    'snapshot abababab cannot be read (authentication failed)'
    >>> _damaged_text([("ab" * 32, "truncated"), ("cd" * 32, "not JSON")])
    '2 snapshots cannot be read: abababab (truncated), cdcdcdcd (not JSON)'
    """
    if len(damaged) == 1:
        name, why = damaged[0]
        return f"snapshot {name[:8]} cannot be read ({why})"
    items = ", ".join(f"{name[:8]} ({why})" for name, why in damaged[:5]) + (", ..." if len(damaged) > 5 else "")
    return f"{len(damaged)} snapshots cannot be read: {items}"


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

