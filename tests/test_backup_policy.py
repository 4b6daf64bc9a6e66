"""Retention policy of fl.backup.Repository.forget: restic's rules, on synthetic snapshot times (no repository)."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from conftest import PLATFORM
from ferrolab.backup import (
    _PRIVATE,
    ForgetResult,
    Repository,
    Snapshot,
    _apply_policy,
    _Duration,
    _make_policy,
    _parse_duration,
)
from hypothesis import given
from hypothesis import strategies as st

T0 = datetime(2024, 5, 15, 12, 0, tzinfo=UTC)
NOW = datetime(2030, 1, 1, tzinfo=UTC)  # after every synthetic snapshot unless a test says otherwise
_ids = itertools.count(1)


def snap(t: datetime, *, host: str = "box", paths: tuple[str, ...] = ("/srv/data",), tags: tuple[str, ...] = ()):
    return Snapshot(f"{next(_ids):064x}", t, paths, tags, host)


def snaps(*times: datetime) -> list[Snapshot]:
    return [snap(t) for t in times]


def apply(snapshots, tz=UTC, now=NOW, **policy):
    return _apply_policy(snapshots, policy, now, tz=tz)


def kept(snapshots, tz=UTC, now=NOW, **policy) -> list[datetime]:
    return [s.time for s in apply(snapshots, tz=tz, now=now, **policy).keep]


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- keep_last -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5, 6, 100])
def test_keep_last_keeps_the_n_newest(n) -> None:
    times = [T0 + timedelta(minutes=7 * i) for i in range(6)]
    s = snaps(*times)
    random.Random(n).shuffle(s)  # the order given does not matter
    result = apply(s, keep_last=n)
    newest_first = sorted(times, reverse=True)
    assert [x.time for x in result.keep] == newest_first[:n]
    assert [x.time for x in result.remove] == newest_first[n:]
    assert all(result.reasons[x.id] == ["last snapshot"] for x in result.keep)
    assert set(result.reasons) == {x.id for x in result.keep}


@given(st.lists(st.integers(0, 10**6), unique=True, max_size=40), st.integers(1, 50))
def test_keep_last_property(offsets, n) -> None:
    s = snaps(*(T0 + timedelta(seconds=o) for o in offsets))
    result = apply(s, keep_last=n)
    newest = sorted(s, key=lambda x: x.time, reverse=True)
    assert result.keep == newest[: min(n, len(s))]
    assert result.remove == newest[min(n, len(s)) :]


# --- time buckets ----------------------------------------------------------------------------------------------
def test_keep_hourly_keeps_the_newest_of_each_recent_hour_with_snapshots() -> None:
    s = snaps(at(2024, 5, 1, 10, 5), at(2024, 5, 1, 10, 40), at(2024, 5, 1, 12, 10), at(2024, 5, 1, 12, 50),
              at(2024, 5, 1, 15, 0))
    # hours 13 and 14 have no snapshot: they are not counted
    assert kept(s, keep_hourly=2) == [at(2024, 5, 1, 15, 0), at(2024, 5, 1, 12, 50)]
    assert kept(s, keep_hourly=3) == [at(2024, 5, 1, 15, 0), at(2024, 5, 1, 12, 50), at(2024, 5, 1, 10, 40)]


def test_a_rule_with_counts_left_also_keeps_the_oldest_snapshot() -> None:
    # restic >= 0.16: "If there are not enough snapshots to keep one for each duration related --keep-* option,
    # the oldest snapshot in the group is kept additionally."
    s = snaps(at(2024, 5, 1, 10, 5), at(2024, 5, 1, 10, 40), at(2024, 5, 1, 12, 10), at(2024, 5, 1, 12, 50))
    result = apply(s, keep_hourly=3)
    assert [x.time for x in result.keep] == [at(2024, 5, 1, 12, 50), at(2024, 5, 1, 10, 40), at(2024, 5, 1, 10, 5)]
    assert [x.time for x in result.remove] == [at(2024, 5, 1, 12, 10)]
    assert result.reasons[s[0].id] == ["hourly snapshot"]
    # exactly enough hours: no count is left when the oldest is reached
    assert kept(s, keep_hourly=2) == [at(2024, 5, 1, 12, 50), at(2024, 5, 1, 10, 40)]


def test_keep_daily_with_several_snapshots_a_day() -> None:
    s = snaps(*(at(2024, 5, d, h) for d in (1, 2, 4) for h in (1, 9, 23)))
    assert kept(s, keep_daily=2) == [at(2024, 5, 4, 23), at(2024, 5, 2, 23)]
    assert kept(s, keep_daily=3) == [at(2024, 5, 4, 23), at(2024, 5, 2, 23), at(2024, 5, 1, 23)]
    # 4 days asked, 3 exist: the oldest snapshot is kept too
    assert kept(s, keep_daily=4) == [at(2024, 5, 4, 23), at(2024, 5, 2, 23), at(2024, 5, 1, 23), at(2024, 5, 1, 1)]


def test_keep_weekly_uses_iso_weeks_across_the_new_year() -> None:
    # 2024-12-29 is a Sunday (ISO 2024-W52); 2024-12-30 (Monday) and 2025-01-05 (Sunday) are both in 2025-W01
    s = snaps(at(2024, 12, 22, 12), at(2024, 12, 29, 12), at(2024, 12, 30, 12), at(2025, 1, 5, 12))
    assert kept(s, keep_weekly=2) == [at(2025, 1, 5, 12), at(2024, 12, 29, 12)]
    result = apply(s, keep_weekly=2)
    assert [x.time for x in result.remove] == [at(2024, 12, 30, 12), at(2024, 12, 22, 12)]


def test_keep_monthly_and_yearly() -> None:
    s = snaps(at(2022, 12, 31, 12), at(2023, 1, 1, 0), at(2023, 6, 1), at(2023, 6, 30), at(2024, 2, 29),
              at(2024, 3, 1))
    assert kept(s, keep_monthly=3) == [at(2024, 3, 1), at(2024, 2, 29), at(2023, 6, 30)]
    assert kept(s, keep_yearly=2) == [at(2024, 3, 1), at(2023, 6, 30)]
    assert kept(s, keep_yearly=3) == [at(2024, 3, 1), at(2023, 6, 30), at(2022, 12, 31, 12)]
    reasons = apply(s, keep_monthly=1, keep_yearly=1).reasons
    assert reasons[s[-1].id] == ["monthly snapshot", "yearly snapshot"]


def test_buckets_are_in_local_time() -> None:
    new_york = ZoneInfo("America/New_York")
    # 2024-05-02 02:00 UTC is 2024-05-01 22:00 in New York: the same day as the 2024-05-01 15:00 UTC snapshot there
    s = snaps(at(2024, 5, 1, 15), at(2024, 5, 2, 2))
    assert kept(s, keep_daily=1, tz=UTC) == [at(2024, 5, 2, 2)]
    assert kept(s, keep_daily=2, tz=UTC) == [at(2024, 5, 2, 2), at(2024, 5, 1, 15)]
    assert kept(s, keep_daily=1, tz=new_york) == [at(2024, 5, 2, 2)]
    # one day in New York: the count is left over, so the oldest is kept as well
    assert kept(s, keep_daily=2, tz=new_york) == [at(2024, 5, 2, 2), at(2024, 5, 1, 15)]
    s3 = snaps(at(2024, 5, 1, 15), at(2024, 5, 1, 16), at(2024, 5, 2, 2), at(2024, 5, 2, 20))
    assert kept(s3, keep_daily=2, tz=UTC) == [at(2024, 5, 2, 20), at(2024, 5, 1, 16)]
    assert kept(s3, keep_daily=2, tz=new_york) == [at(2024, 5, 2, 20), at(2024, 5, 2, 2)]


def test_hourly_buckets_follow_the_local_clock_over_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 2024-10-27: 02:00-03:00 CEST and 02:00-03:00 CET are two UTC hours but one local hour (as in restic)
    s = snaps(at(2024, 10, 27, 0, 30), at(2024, 10, 27, 1, 30))
    assert kept(s, keep_hourly=1, tz=berlin) == [at(2024, 10, 27, 1, 30)]
    assert kept(s, keep_hourly=1, tz=UTC) == [at(2024, 10, 27, 1, 30)]
    assert len(kept(s, keep_hourly=2, tz=UTC)) == 2


@pytest.fixture
def local_zone(monkeypatch):
    """Sets the process's local time zone (TZ + time.tzset) for one test."""
    import time

    if not hasattr(time, "tzset"):
        pytest.skip(PLATFORM + "time.tzset is POSIX only")

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def test_local_time_is_the_default(local_zone) -> None:
    local_zone("America/New_York")
    s = snaps(at(2024, 5, 1, 15), at(2024, 5, 2, 2))
    assert [x.time for x in _apply_policy(s, {"keep_daily": 1}, NOW).keep] == [at(2024, 5, 2, 2)]
    assert len(_apply_policy(s, {"keep_daily": 2}, NOW).keep) == 2  # one day: the oldest is kept as well
    s3 = snaps(at(2024, 5, 1, 15), at(2024, 5, 1, 16), at(2024, 5, 2, 2), at(2024, 5, 2, 20))
    assert [x.time for x in _apply_policy(s3, {"keep_daily": 2}, NOW).keep] == [at(2024, 5, 2, 20), at(2024, 5, 2, 2)]


def test_keep_within_calendar_days_in_the_local_zone(local_zone) -> None:
    local_zone("Europe/Berlin")
    # as test_keep_within_days_are_local_calendar_days_and_hours_are_absolute, with the process's own zone
    s = snaps(at(2024, 3, 30, 10, 30), at(2024, 3, 31, 10))
    assert [x.time for x in _apply_policy(s, {"keep_within": "1d"}, NOW).keep] == [at(2024, 3, 31, 10)]
    assert len(_apply_policy(s, {"keep_within": "24h"}, NOW).keep) == 2


def _reference_bucket_keep(times: list[datetime], n: int, key) -> list[datetime]:
    """An independent model of one bucket rule: newest of each of the first n buckets, plus the oldest when the
    rule still has counts left at the end."""
    ordered = sorted(times, reverse=True)
    out: list[datetime] = []
    buckets = 0
    for _bucket, members in itertools.groupby(ordered, key=key):
        if buckets == n:
            break
        out.append(next(members))
        buckets += 1
    if buckets < n and ordered and ordered[-1] not in out:
        out.append(ordered[-1])
    return out


_KEYS = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: t.date(),
    "weekly": lambda t: t.isocalendar()[:2],
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: t.year,
}
_SPAN = {"hourly": 3600 * 30, "daily": 86400 * 40, "weekly": 86400 * 120, "monthly": 86400 * 500,
         "yearly": 86400 * 3000}


@pytest.mark.parametrize("rule", list(_KEYS))
@given(data=st.data())
def test_bucket_rules_match_a_reference_model(rule, data) -> None:
    offsets = data.draw(st.lists(st.integers(0, _SPAN[rule]), unique=True, max_size=30), label="offsets")
    n = data.draw(st.integers(1, 12), label="n")
    times = [at(2023, 12, 20) + timedelta(seconds=o * 37) for o in offsets]
    s = snaps(*times)
    result = apply(s, **{f"keep_{rule}": n})
    assert [x.time for x in result.keep] == _reference_bucket_keep(times, n, _KEYS[rule])
    assert len(result.keep) + len(result.remove) == len(s)
    assert all(result.reasons[x.id] == [f"{rule} snapshot"] for x in result.keep)


# --- keep_within -----------------------------------------------------------------------------------------------
def test_keep_within_is_relative_to_the_newest_snapshot_not_now() -> None:
    s = snaps(at(2020, 1, 1), at(2020, 1, 5), at(2020, 1, 8), at(2020, 1, 10))
    result = apply(s, keep_within="3d")
    assert [x.time for x in result.keep] == [at(2020, 1, 10), at(2020, 1, 8)]
    assert [x.time for x in result.remove] == [at(2020, 1, 5), at(2020, 1, 1)]
    assert result.reasons[s[-1].id] == ["within 3d"]


def test_keep_within_boundary_is_exclusive() -> None:
    # restic keeps a snapshot when its time is strictly after newest - duration
    s = snaps(at(2020, 1, 7), at(2020, 1, 7, 0, 0, 1), at(2020, 1, 10))
    assert kept(s, keep_within="3d") == [at(2020, 1, 10), at(2020, 1, 7, 0, 0, 1)]
    assert kept(s, keep_within=timedelta(days=3)) == [at(2020, 1, 10), at(2020, 1, 7, 0, 0, 1)]
    assert kept(s, keep_within=3 * 86400) == [at(2020, 1, 10), at(2020, 1, 7, 0, 0, 1)]
    assert kept(s, keep_within=3 * 86400 + 0.5) == [at(2020, 1, 10), at(2020, 1, 7, 0, 0, 1), at(2020, 1, 7)]


def test_keep_within_ignores_snapshots_in_the_future() -> None:
    now = at(2024, 6, 1)
    s = snaps(now - timedelta(days=30), now - timedelta(days=20), now - timedelta(days=10), now + timedelta(days=1))
    # the newest snapshot that is not in the future is now - 10d: cutoff now - 15d
    assert kept(s, now=now, keep_within="5d") == [now + timedelta(days=1), now - timedelta(days=10)]
    # with every snapshot in the future there is no newest one: restic then keeps them all
    assert len(kept(s, now=at(2000, 1, 1), keep_within="5d")) == 4


def test_keep_within_months_are_calendar_months() -> None:
    # Go's AddDate: 2024-03-31 minus one month is "2024-02-31", i.e. 2024-03-02 (leap year)
    s = snaps(at(2024, 3, 2, 11), at(2024, 3, 2, 13), at(2024, 3, 31, 12))
    assert kept(s, keep_within="1m") == [at(2024, 3, 31, 12), at(2024, 3, 2, 13)]
    # 30 days would have kept the 11:00 one as well
    assert len(kept(s, keep_within=timedelta(days=30))) == 3
    # one year before 2024-02-29 is "2023-02-29", i.e. 2023-03-01
    s = snaps(at(2023, 2, 28, 23), at(2023, 3, 1, 1), at(2024, 2, 29))
    assert kept(s, keep_within="1y") == [at(2024, 2, 29), at(2023, 3, 1, 1)]


def test_keep_within_days_are_local_calendar_days_and_hours_are_absolute() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # newest: 2024-03-31 12:00 CEST (10:00 UTC); one calendar day earlier is 2024-03-30 12:00 CET (11:00 UTC),
    # 23 real hours before, because the clocks went forward in between
    s = snaps(at(2024, 3, 30, 10, 30), at(2024, 3, 31, 10))
    assert kept(s, keep_within="1d", tz=berlin) == [at(2024, 3, 31, 10)]
    assert kept(s, keep_within="24h", tz=berlin) == [at(2024, 3, 31, 10), at(2024, 3, 30, 10, 30)]
    assert kept(s, keep_within=timedelta(days=1), tz=berlin) == [at(2024, 3, 31, 10), at(2024, 3, 30, 10, 30)]
    assert kept(s, keep_within="1d", tz=UTC) == [at(2024, 3, 31, 10), at(2024, 3, 30, 10, 30)]


def test_keep_within_combined_units() -> None:
    newest = at(2024, 8, 20, 18)
    cutoff = at(2022, 3, 13, 15)  # 2y5m7d3h before
    s = snaps(cutoff, cutoff + timedelta(seconds=1), newest)
    assert kept(s, keep_within="2y5m7d3h") == [newest, cutoff + timedelta(seconds=1)]
    assert kept(s, keep_within=" 3h7d5m2y ") == [newest, cutoff + timedelta(seconds=1)]  # any order, like restic


def test_huge_durations_keep_everything() -> None:
    s = snaps(at(1, 1, 2), at(2024, 1, 1))
    assert len(kept(s, keep_within="9999y")) == 2
    assert len(kept(s, keep_within=timedelta(days=999_999_999))) == 2


@given(st.lists(st.integers(0, 10**7), unique=True, min_size=1, max_size=30), st.integers(1, 10**7))
def test_keep_within_property(offsets, seconds) -> None:
    s = snaps(*(T0 + timedelta(seconds=o) for o in offsets))
    newest = max(x.time for x in s)
    result = apply(s, keep_within=timedelta(seconds=seconds))
    assert {x.id for x in result.keep} == {x.id for x in s if x.time > newest - timedelta(seconds=seconds)}


# --- combinations, ties, order ---------------------------------------------------------------------------------
def test_rules_combine_as_a_union_with_all_reasons() -> None:
    s = snaps(*(at(2024, 5, d, h) for d in range(1, 8) for h in (6, 18)))
    result = apply(s, keep_last=3, keep_daily=2, keep_weekly=2)
    times = [x.time for x in result.keep]
    # last 3: 7th 18h, 7th 6h, 6th 18h; daily 2: 7th 18h, 6th 18h; weekly 2: 2024-W19 (May 6-7) and W18 (May 1-5)
    assert times == [at(2024, 5, 7, 18), at(2024, 5, 7, 6), at(2024, 5, 6, 18), at(2024, 5, 5, 18)]
    by_time = {x.time: result.reasons[x.id] for x in result.keep}
    assert by_time[at(2024, 5, 7, 18)] == ["last snapshot", "daily snapshot", "weekly snapshot"]
    assert by_time[at(2024, 5, 7, 6)] == ["last snapshot"]
    assert by_time[at(2024, 5, 6, 18)] == ["last snapshot", "daily snapshot"]
    assert by_time[at(2024, 5, 5, 18)] == ["weekly snapshot"]
    both = apply(s, keep_within="1d", keep_last=1)
    assert both.reasons[both.keep[0].id] == ["within 1d", "last snapshot"]


_POLICY = st.fixed_dictionaries(
    {},
    optional={
        "keep_last": st.integers(0, 6),
        "keep_hourly": st.integers(0, 6),
        "keep_daily": st.integers(0, 6),
        "keep_weekly": st.integers(0, 6),
        "keep_monthly": st.integers(0, 6),
        "keep_yearly": st.integers(0, 6),
        "keep_within": st.sampled_from(["1h", "2d", "1m", "1y2d"]),
    },
)


@given(st.lists(st.integers(0, 3 * 10**7), max_size=25), _POLICY, _POLICY)
def test_adding_rules_never_removes_a_kept_snapshot(offsets, p, q) -> None:
    s = snaps(*(T0 + timedelta(seconds=o) for o in offsets))  # duplicates (ties) included
    merged = {**p, **q}
    rules = [dict([item]) for item in merged.items() if item[1]]
    if not rules:
        with pytest.raises(ValueError, match="no policy"):
            apply(s, **merged)
        return
    union = set()
    for rule in rules:  # each rule alone
        union |= {x.id for x in apply(s, **rule).keep}
    combined = apply(s, **merged)
    assert {x.id for x in combined.keep} == union  # the rules are independent: the result is their union
    assert {x.id for x in combined.keep}.isdisjoint(x.id for x in combined.remove)
    assert len(combined.keep) + len(combined.remove) == len(s)


def test_ties_keep_the_order_given() -> None:
    a, b, c = snap(at(2024, 5, 1, 12)), snap(at(2024, 5, 1, 12)), snap(at(2024, 5, 1, 6))
    for order in ([a, b, c], [b, a, c]):
        result = _apply_policy(order, {"keep_daily": 1}, NOW, tz=UTC)
        assert result.keep == [order[0]]
        assert result.remove == [order[1], c]
    assert _apply_policy([a, b, c], {"keep_last": 2}, NOW, tz=UTC).keep == [a, b]


@given(st.lists(st.integers(0, 10**7), unique=True, max_size=20), _POLICY, st.randoms(use_true_random=False))
def test_the_input_order_does_not_matter_without_ties(offsets, policy, rnd) -> None:
    if not any(policy.values()):
        return
    s = snaps(*(T0 + timedelta(seconds=o) for o in offsets))
    shuffled = list(s)
    rnd.shuffle(shuffled)
    first, second = apply(s, **policy), apply(shuffled, **policy)
    assert first.keep == second.keep and first.remove == second.remove and first.reasons == second.reasons


def test_empty_list_and_aware_non_utc_times() -> None:
    assert apply([], keep_last=1) == ([], [], {})
    tokyo = ZoneInfo("Asia/Tokyo")
    s = [snap(datetime(2024, 5, 2, 8, tzinfo=tokyo)), snap(at(2024, 5, 1, 22))]  # 23:00 UTC the day before
    assert [x.time for x in apply(s, keep_last=1).keep] == [datetime(2024, 5, 2, 8, tzinfo=tokyo)]
    assert len(apply(s, keep_daily=1).keep) == 1  # both are 2024-05-01 in UTC
    naive_now = apply(s, now=datetime(2030, 1, 1), keep_within="1h")  # a naive `now` is local time
    assert len(naive_now.keep) == 1


# --- arguments -------------------------------------------------------------------------------------------------
def test_an_empty_policy_is_refused() -> None:
    s = snaps(T0)
    for policy in ({}, {"keep_last": None}, {"keep_last": 0, "keep_daily": 0}, {"keep_within": "0d"},
                   {"keep_within": 0}, {"keep_within": timedelta(0)}):
        with pytest.raises(ValueError, match="no policy"):
            _apply_policy(s, policy, NOW)
    # zero counts are "not set" next to a real rule
    assert len(apply(snaps(T0, T0 + timedelta(days=1)), keep_last=0, keep_daily=1).keep) == 1


@pytest.mark.parametrize(
    ("policy", "exc", "match"),
    [
        ({"keep_last": -1}, ValueError, "keep_last.*-1"),
        ({"keep_daily": -3}, ValueError, "keep_daily"),
        ({"keep_last": True}, TypeError, "keep_last.*bool"),
        ({"keep_hourly": 2.0}, TypeError, "keep_hourly.*float"),
        ({"keep_weekly": "2"}, TypeError, "keep_weekly.*str"),
        ({"keep_within": ""}, ValueError, "keep_within"),
        ({"keep_within": "5"}, ValueError, "keep_within"),
        ({"keep_within": "5w"}, ValueError, "keep_within"),
        ({"keep_within": "d"}, ValueError, "keep_within"),
        ({"keep_within": "-1d"}, ValueError, "keep_within"),
        ({"keep_within": "1d1d"}, ValueError, "twice"),
        ({"keep_within": "1.5d"}, ValueError, "keep_within"),
        ({"keep_within": -1}, ValueError, "keep_within"),
        ({"keep_within": float("nan")}, ValueError, "keep_within"),
        ({"keep_within": float("inf")}, ValueError, "keep_within"),
        ({"keep_within": timedelta(seconds=-1)}, ValueError, "keep_within"),
        ({"keep_within": [1]}, TypeError, "keep_within"),
        ({"keep_within": True}, TypeError, "keep_within"),
        ({"keep_forever": 1}, TypeError, "keep_forever"),
    ],
)
def test_invalid_arguments(policy, exc, match) -> None:
    with pytest.raises(exc, match=match):
        _apply_policy(snaps(T0), policy, NOW)
    with pytest.raises(exc, match=match):
        _make_policy("forget", **policy)


def test_integer_like_counts_are_accepted() -> None:
    s = snaps(*(T0 + timedelta(hours=i) for i in range(5)))
    assert len(apply(s, keep_last=np.int64(2)).keep) == 2


def test_parse_duration() -> None:
    assert _parse_duration("forget", "2y5m7d3h") == _Duration(2, 5, 7, 3)
    assert _parse_duration("forget", "36h") == _Duration(hours=36)
    assert str(_parse_duration("forget", "3h1y")) == "1y3h"
    assert not _parse_duration("forget", "0d")


# --- forget on a repository: dry_run and grouping ---------------------------------------------------------------
class _FakeNative:
    """Only what Repository.forget uses: the snapshot list and the deletion of snapshot objects."""

    url = "/srv/backups"

    def __init__(self, snapshots: list[Snapshot]) -> None:
        self._snapshots = snapshots
        self.forgotten: list[list[str]] = []

    def load_snapshots(self) -> tuple[list[dict], list[tuple[str, str]]]:
        return [{**s.to_dict(), "time": s.time.timestamp()} for s in self._snapshots], []

    def forget(self, ids: list[str]) -> None:
        self.forgotten.append(list(ids))
        self._snapshots = [s for s in self._snapshots if s.id not in ids]


def test_forget_dry_run_deletes_nothing_and_a_real_run_deletes_exactly_the_removed() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    history = [snap(now - timedelta(days=d), host=h) for d in range(5) for h in ("a", "b")]
    native = _FakeNative(history)
    repo = Repository(native, _token=_PRIVATE)

    plan = repo.forget(keep_last=2, dry_run=True)
    assert isinstance(plan, ForgetResult) and plan.dry_run
    assert native.forgotten == []
    assert len(repo.snapshots()) == 10
    # grouped by host and paths, like restic: the two newest of each host
    assert sorted((s.hostname, s.time) for s in plan.keep) == sorted(
        (h, now - timedelta(days=d)) for d in range(2) for h in ("a", "b")
    )
    assert len(plan.remove) == 6
    assert [s.time for s in plan.keep] == sorted((s.time for s in plan.keep), reverse=True)

    done = repo.forget(keep_last=2)
    assert not done.dry_run
    assert native.forgotten == [[s.id for s in plan.remove]]
    assert {s.id for s in repo.snapshots()} == {s.id for s in plan.keep}
    assert {s.id for s in done.keep} == {s.id for s in plan.keep} and done.remove == plan.remove

    again = repo.forget(keep_last=2)
    assert again.remove == [] and len(native.forgotten) == 1  # nothing left to remove: no call

    single = repo.forget(keep_last=2, dry_run=True, group_by=None)
    assert len(single.keep) == 2 and len(single.remove) == 2
    with pytest.raises(ValueError, match="no policy"):
        repo.forget(dry_run=True)
    with pytest.raises(ValueError, match="group_by"):
        repo.forget(keep_last=1, group_by="host,colour")
    with pytest.raises(TypeError, match="dry_run"):
        repo.forget(keep_last=1, dry_run="yes")
    assert len(native.forgotten) == 1
