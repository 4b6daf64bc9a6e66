"""The hot loops really compile to AVX2/FMA, and a baseline copy exists for CPUs without them.

Checked on the built extension with objdump (a disassembly check, not a timing). Only ferrolab's own kernel code is
counted: the linked `gemm` crate alone has hundreds of ymm FMAs, so a count over the whole library could not fail.

Which symbols hold the hot loops: every kernel runs inside one generic wrapper,
``ferrolab_core::kernels::dispatch::run_avx2_fma`` (``#[target_feature(enable = "avx2,fma")]``, one instance per
kernel type) or, on CPUs without AVX2/FMA, inside the baseline copy inlined into ``dispatch::dispatch``. With the
legacy symbol mangling every instance demangles to the same name, so each one is attributed to the kernel module(s)
(``reduce``, ``elementwise``, ``stats``...) of its nearest callers whose demangled names name one (e.g.
``ferrolab_core::kernels::reduce::sum_canon::{{closure}}``). Functions whose own names name a kernel module count
for it directly. Nothing outside symbols containing ``ferrolab_core::kernels`` is counted.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess

import ferrolab
import pytest
from conftest import MISSING
from ferrolab import _core

KERNELS = "ferrolab_core::kernels::"
# the modules that hold computing kernels (dispatch, simd and layout are shared plumbing, attributed to their callers)
MODULES = ("reduce", "elementwise", "stats", "distance", "optim", "linalg", "int")
MODULE_RE = re.compile(r"ferrolab_core::kernels::(" + "|".join(MODULES) + r")::")
HEADER_RE = re.compile(r"^([0-9a-f]+) <(.*)>:$")
BRANCH_RE = re.compile(r"\s(?:call|jmp)\s+([0-9a-f]+) <")
# how many callers up a dispatch wrapper is followed to the kernel that uses it
CALLER_DEPTH = 4

# instruction classes (AT&T syntax from objdump)
YMM_FMA = re.compile(r"\svfn?m(?:add|sub)\d+p[sd]\s+.*%ymm")
ANY_PACKED_FMA = re.compile(r"\svfn?m(?:add|sub)\d+p[sd]\s")
YMM_ADD = re.compile(r"\svaddp[sd]\s+.*%ymm")
YMM_WIDEN = re.compile(r"\svcvtps2pd\s+.*%ymm")
YMM_ARITH = re.compile(
    r"\sv(?:add|sub|mul|div|max|min|sqrt|and|andn|or|xor|blendv|cmp\w*|fn?m(?:add|sub)\d+)p[sd]\s+.*%ymm"
)
SSE_ADD = re.compile(r"\s(?:addpd|addps)\s+%xmm")  # no VEX prefix: the baseline (SSE2) copy
CLASSES = {
    "ymm_fma": YMM_FMA,
    "packed_fma": ANY_PACKED_FMA,
    "ymm_add": YMM_ADD,
    "ymm_widen": YMM_WIDEN,
    "ymm_arith": YMM_ARITH,
    "sse_add": SSE_ADD,
}


def _parse(disassembly: str) -> tuple[dict[int, str], dict[int, list[str]], dict[int, set[int]]]:
    """Function start -> demangled name, kernel function start -> its instruction lines, callee -> callers."""
    names: dict[int, str] = {}
    body: dict[int, list[str]] = {}
    calls: list[tuple[int, int]] = []
    cur: int | None = None
    for line in disassembly.splitlines():
        m = HEADER_RE.match(line)
        if m:
            cur = int(m.group(1), 16)
            names[cur] = m.group(2)
            if KERNELS in names[cur]:
                body[cur] = []
            continue
        if cur is None or not line.startswith(" "):
            continue
        if cur in body:
            body[cur].append(line)
        if "call" in line or "jmp" in line:
            b = BRANCH_RE.search(line)
            if b:
                calls.append((cur, int(b.group(1), 16)))
    callers: dict[int, set[int]] = collections.defaultdict(set)
    for caller, target in calls:
        if target in names and target != caller:  # a jump to another function's start: a call or a tail call
            callers[target].add(caller)
    return names, body, callers


def _modules_of(start: int, names: dict[int, str], callers: dict[int, set[int]]) -> set[str]:
    """The kernel modules a function belongs to: the ones its name names, else those of its nearest callers."""
    frontier, seen = {start}, {start}
    for _ in range(CALLER_DEPTH + 1):
        found = {m for f in frontier for m in MODULE_RE.findall(names[f])}
        if found:
            return found
        frontier = {c for f in frontier for c in callers.get(f, ()) if c not in seen}
        seen |= frontier
    return set()


@pytest.fixture(scope="module")
def counts() -> dict[str, collections.Counter[str]]:
    """Kernel module -> counts of each instruction class over the kernel symbols attributed to it."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip(MISSING + "objdump (binutils)")
    disassembly = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", "--demangle", _core.__file__],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names, body, callers = _parse(disassembly)
    assert body, f"no symbol containing {KERNELS!r} in {_core.__file__} (stripped, or renamed?)"
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for start, lines in body.items():
        c = collections.Counter({k: sum(1 for ln in lines if rx.search(ln)) for k, rx in CLASSES.items()})
        if not any(c.values()):
            continue
        for module in _modules_of(start, names, callers) or {"?"}:
            out[module].update(c)
    return out


# Floors well below what the current build has (reduce: ~40 ymm FMAs, ~100 ymm adds, ~35 widenings; elementwise: ~8
# ymm FMAs; stats: ~60 and optim: ~120 ymm arithmetic instructions; distance: ~100 xmm FMAs; baseline reduce: ~360
# SSE adds), so compiler variation passes and a kernel that is no longer vectorized fails.
@pytest.mark.parametrize(
    ("module", "cls", "floor", "what"),
    [
        ("reduce", "ymm_fma", 8, "256-bit fused multiply-adds (sum of squares, dot, moments)"),
        ("reduce", "ymm_add", 20, "256-bit packed adds (sums)"),
        ("reduce", "ymm_widen", 2, "float32 sums widened to float64 lanes"),
        ("elementwise", "ymm_fma", 2, "256-bit fused multiply-adds (fma, axpy)"),
        ("stats", "ymm_arith", 8, "256-bit packed arithmetic (standardize, zscore)"),
        ("optim", "ymm_arith", 8, "256-bit packed arithmetic (adam_step)"),
        ("distance", "packed_fma", 4, "packed fused multiply-adds (cdist)"),
    ],
)
def test_kernels_compile_to_avx2_fma(counts, module: str, cls: str, floor: int, what: str) -> None:
    got = counts.get(module, collections.Counter())[cls]
    assert got >= floor, f"kernels::{module}: {got} {cls} ({what}), expected >= {floor}; all: {dict(counts)}"


def test_baseline_copy_present(counts) -> None:
    # the SSE2 copies of the same kernels (no VEX prefix) serve CPUs without AVX2
    got = counts.get("reduce", collections.Counter())["sse_add"]
    assert got >= 20, f"kernels::reduce: {got} SSE2 packed adds in the baseline copy, expected >= 20"


def test_runtime_level_is_reported() -> None:
    assert ferrolab.simd_level() in ("avx2+fma", "baseline")
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    if " avx2 " in flags and " fma " in flags:
        assert ferrolab.simd_level() == "avx2+fma"
