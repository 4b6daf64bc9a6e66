"""Retention policy of :meth:`ferrolab.backup.Repository.forget`, with restic's rules: the ``keep_*`` arguments,
restic's duration syntax, which snapshots a policy keeps, and grouping by host, paths or tags."""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, NamedTuple

from ._args import _str_list, _type_name

if TYPE_CHECKING:
    from . import Snapshot

#: What ``group_by`` of :meth:`Repository.forget` may contain.
GROUP_BY_KEYS = ("host", "paths", "tags")

_DURATION_PART = re.compile(r"(\d+)([ymdh])")


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
                try:
                    within = timedelta(seconds=value)
                except OverflowError:
                    raise ValueError(f"{func}(): argument 'keep_within' is {value!r} seconds; expected at most "
                                     f"{timedelta.max.total_seconds():.0f} (timedelta.max)") from None
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

