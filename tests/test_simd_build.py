"""The hot loops really compile to AVX2/FMA, and a baseline copy exists for CPUs without them.

Checked on the built extension with objdump (a disassembly check, not a timing).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import ferrolab
import pytest
from ferrolab import _core


@pytest.fixture(scope="module")
def disassembly() -> str:
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    out = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", _core.__file__], capture_output=True, text=True, check=True
    ).stdout
    return out


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


def test_avx2_fma_vector_instructions_present(disassembly: str) -> None:
    # 256-bit fused multiply-adds and packed adds/compares on ymm registers come from the kernels compiled
    # with target_feature(avx2,fma)
    assert _count(r"vfmadd\d+p[sd]\s+.*%ymm", disassembly) >= 20
    assert _count(r"vaddp[sd]\s+.*%ymm", disassembly) >= 50
    assert _count(r"vcvtps2pd\s+.*%ymm", disassembly) >= 2  # float32 sums widen to float64 lanes


def test_baseline_copy_present(disassembly: str) -> None:
    # the SSE2 copies of the same kernels (no VEX prefix) serve CPUs without AVX2
    assert _count(r"\s(addpd|addps)\s+%xmm", disassembly) >= 20


def test_runtime_level_is_reported() -> None:
    assert ferrolab.simd_level() in ("avx2+fma", "baseline")
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    if " avx2 " in flags and " fma " in flags:
        assert ferrolab.simd_level() == "avx2+fma"
