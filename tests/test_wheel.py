"""The abi3 wheel works on every CPython it claims (>= 3.11), installed on its own into a fresh virtual environment.

The wheel is built from this checkout with maturin (the release profile CI already built, so mostly a re-link) and
installed, with NumPy only, into a new venv for the interpreter running the tests (3.11) and for the newest other
CPython installed on the machine (its package manager's ``/usr/bin/python3.X`` — Debian 12 offers 3.11 —, one on
``PATH`` or a pyenv version). In each, a script uses every part: ops against NumPy, metrics exposition, a
breaker, a span, a backup round trip and the CLI entry point.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

SMOKE = r"""
import subprocess, sys, tempfile, pathlib
import numpy as np
import ferrolab as fl

assert "site-packages" in fl.__file__, fl.__file__
x = np.random.default_rng(0).standard_normal(100_000)
assert np.isclose(fl.ops.sum(x), x.sum())
assert np.allclose(fl.ops.standardize(x), (x - x.mean()) / x.std())
a = np.random.default_rng(1).standard_normal((64, 32))
assert np.allclose(fl.ops.matmul(a, a.T), a @ a.T)
try:
    fl.ops.sum(np.ones(3, dtype=complex))
except TypeError:
    pass
else:
    raise AssertionError("complex input accepted")

c = fl.metrics.Counter("wheel_smoke_total", "smoke", labelnames=["k"])
c.labels(k="a").inc(2)
text = fl.metrics.exposition()
assert 'wheel_smoke_total{k="a"} 2' in text, text
assert "ferrolab_operations_total" in text

br = fl.CircuitBreaker("wheel", failure_threshold=1)
@br
def boom():
    raise RuntimeError("x")
try:
    boom()
except RuntimeError:
    pass
assert br.state == "open", br.state

with fl.tracing.span("wheel-smoke"):
    fl.ops.mean(x)

with tempfile.TemporaryDirectory() as d:
    d = pathlib.Path(d)
    (d / "src").mkdir()
    (d / "src" / "f.bin").write_bytes(bytes(range(256)) * 100)
    repo = fl.backup.Repository.init(str(d / "repo"), password="pw")
    snap = repo.backup(str(d / "src"))
    repo.restore(snap.id, str(d / "out"))
    # restored under its absolute path, as restic does
    restored = d / "out" / (d / "src" / "f.bin").relative_to("/")
    assert restored.read_bytes() == (d / "src" / "f.bin").read_bytes()
    assert repo.verify().ok

out = subprocess.run([sys.executable, "-m", "ferrolab", "--version"], capture_output=True, text=True, check=True)
assert fl.__version__ in out.stdout, out.stdout
print("OK", sys.version.split()[0], fl.__version__)
"""


def _runs(exe: str) -> str | None:
    """The interpreter's own path when ``exe`` starts (a pyenv shim of an unselected version does not)."""
    try:
        r = subprocess.run([exe, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def interpreters() -> list[str]:
    """This interpreter and the newest other CPython 3 installed: the system package manager's
    (``/usr/bin/python3.X``), one on PATH, or one of pyenv's versions."""
    candidates: dict[int, list[str]] = {}
    for minor in range(11, 31):
        exes = [f"/usr/bin/python3.{minor}", shutil.which(f"python3.{minor}")]
        pyenv_root = Path.home() / ".pyenv" / "versions"
        exes += sorted(str(p) for p in pyenv_root.glob(f"3.{minor}.*/bin/python3.{minor}"))
        candidates[minor] = [e for e in exes if e]
    found = [sys.executable]
    for minor in sorted(candidates, reverse=True):
        for exe in candidates[minor]:
            real = _runs(exe)
            if real and Path(real).resolve() != Path(sys.executable).resolve():
                return [*found, real]
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "maturin", "build", "--release", "--quiet", "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    wheels = list(out.glob("ferrolab-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_is_abi3_for_311_and_has_no_libpython(wheel: Path) -> None:
    assert re.search(r"-cp311-abi3-[a-z0-9_.]+\.whl$", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        so = [n for n in names if n.startswith("ferrolab/_core") and n.endswith(".so")]
        assert so == ["ferrolab/_core.abi3.so"], so
        assert "ferrolab/py.typed" in names and "ferrolab/_core.pyi" in names
        data = z.read(so[0])
    # an abi3 extension must not link a particular libpython
    assert b"libpython3" not in data


@pytest.mark.parametrize("python", interpreters())
def test_wheel_installs_and_works_in_a_fresh_venv(wheel: Path, python: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    # run from an empty folder so that the checkout's python/ cannot shadow the installed package
    r = subprocess.run([str(py), "-c", SMOKE], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.startswith("OK "), r.stdout
