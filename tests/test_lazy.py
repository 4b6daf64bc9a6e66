"""ferrolab._lazy: submodules that run on first use, once, in the object the package already holds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PKG_INIT = """
from ferrolab import _lazy
_lazy.attach(globals(), ("slow", "flaky", "circular", "sub"))
"""
# a package whose code imports its own submodule (as ferrolab.backup does)
SUB_INIT = """
from ._impl import VALUE, RUNS
RUNS.append("package")
"""
SUB_IMPL = """
RUNS = []
RUNS.append("impl")
VALUE = 5
"""
# runs for 0.3 s, counting its runs in a file, so that threads touching it at once would run it twice
SLOW = """
import os, time
RUNS = os.path.join(os.path.dirname(__file__), "runs")
with open(RUNS, "a") as f:
    f.write("x")
time.sleep(0.3)
value = 42
"""
# fails on its first run only
FLAKY = """
import os
MARK = os.path.join(os.path.dirname(__file__), "failed-once")
if not os.path.exists(MARK):
    open(MARK, "w").close()
    raise RuntimeError("first run fails")
value = 7
"""
# imports itself (and reads its own attribute through the package) while it runs
CIRCULAR = """
early = 1
import lazypkg.circular
from lazypkg import circular as me
assert me.early == 1
late = me.early + 1
"""


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    pkg = tmp_path / "lazypkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text(PKG_INIT)
    (pkg / "slow.py").write_text(SLOW)
    (pkg / "flaky.py").write_text(FLAKY)
    (pkg / "circular.py").write_text(CIRCULAR)
    (pkg / "sub").mkdir(exist_ok=True)
    (pkg / "sub" / "__init__.py").write_text(SUB_INIT)
    (pkg / "sub" / "_impl.py").write_text(SUB_IMPL)
    code = f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_threads_touching_a_pending_submodule_at_once_run_it_once(tmp_path: Path) -> None:
    proc = _run(tmp_path, """
        import threading, types, lazypkg
        mod = lazypkg.__dict__["slow"]
        assert type(mod) is not types.ModuleType and sys.modules["lazypkg.slow"] is mod
        start = threading.Barrier(8)
        seen = []
        def touch():
            start.wait()
            seen.append(lazypkg.slow.value)
        threads = [threading.Thread(target=touch) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert seen == [42] * 8, seen
        assert type(lazypkg.slow) is types.ModuleType and lazypkg.slow is mod is sys.modules["lazypkg.slow"]
        print(open(lazypkg.slow.RUNS).read())
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "x"  # one run


def test_a_failed_run_raises_and_the_next_access_runs_it_again(tmp_path: Path) -> None:
    proc = _run(tmp_path, """
        import lazypkg
        import lazypkg.flaky  # binds it; its code runs on first use
        from lazypkg import flaky
        try:
            flaky.value
        except RuntimeError as e:
            assert str(e) == "first run fails"
        else:
            raise AssertionError("no error from the first run")
        assert "MARK" not in object.__getattribute__(flaky, "__dict__")  # nothing left of the failed run
        print(flaky.value, lazypkg.flaky is flaky is sys.modules["lazypkg.flaky"])
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "7 True"


def test_a_submodule_of_a_pending_package_runs_once(tmp_path: Path) -> None:
    # the import system reads the pending package's __path__ and binds the submodule on it: neither runs the
    # package, whose own import of the submodule then finds it done
    proc = _run(tmp_path, """
        import lazypkg
        import lazypkg.sub._impl
        impl = sys.modules["lazypkg.sub._impl"]
        assert impl.RUNS == ["impl"]  # the package has not run yet
        print(lazypkg.sub.VALUE, impl.RUNS, lazypkg.sub._impl is impl)
        print(repr(lazypkg.slow))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["5 ['impl', 'package'] True", "<module 'lazypkg.slow' (not run yet)>"]


def test_a_submodule_may_import_itself_while_it_runs(tmp_path: Path) -> None:
    proc = _run(tmp_path, """
        import lazypkg
        from lazypkg import circular
        print(circular.late)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2"
