"""Helpers for the fl.backup tests: tree manifests, repository layout, byte flips and child processes.

Run as a script, it is the child process of some tests (``python backup_helpers.py COMMAND ...``), with the
password in ``FERROLAB_PASSWORD``:

* ``hold REPO PATH READY``: starts a backup of PATH and, once the repository lock is taken (the first progress
  report), creates the file READY and sleeps until it is killed;
* ``together REPO PATH READY OTHER``: starts a backup of PATH, creates READY once its lock is taken and its index
  loaded, waits until OTHER exists (the other child is as far), then finishes and prints the snapshot id;
* ``big STEP REPO PATH [TARGET]``: ``backup`` PATH, or ``restore`` the latest snapshot into TARGET, printing the
  result as JSON, with this process's peak RSS as the kernel's VmHWM (for the memory test);
* ``measure COMMAND ARGS...``: runs ``backup_helpers.py COMMAND ARGS...`` as its child and prints JSON with the
  child's exit status, output and peak RSS from ``os.wait4``. The measuring process must be small: Linux starts the
  peak RSS of an exec'd child at the RSS of the process it was forked from, so a child of the test process itself
  would report at least the test process's size.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

PASSWORD = "correct horse battery staple"
HERE = os.path.dirname(os.path.abspath(__file__))

# --- trees ------------------------------------------------------------------------------------------------------


def file_digest(path: str | bytes | os.PathLike[Any], block: int = 1 << 20) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file, read in blocks (never the whole file at once)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(block)
            if not b:
                break
            size += len(b)
            h.update(b)
    return size, h.hexdigest()


def manifest(root: str | bytes | os.PathLike[Any], contents: bool = True) -> dict[bytes, tuple[Any, ...]]:
    """Every entry under ``root`` (``root`` itself as ``b""``), by relative path as bytes, with what a restore
    must reproduce: kind, permission bits, mtime in ns, and the size and SHA-256 of a file or a symlink's target.

    Symlinks are not followed; names are bytes, so names that are not UTF-8 are compared exactly.
    """
    top = os.fsencode(root)
    out: dict[bytes, tuple[Any, ...]] = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        path = os.path.join(top, rel) if rel else top
        st = os.lstat(path)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", st.st_mtime_ns, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", mode, st.st_mtime_ns)
            for name in os.listdir(path):
                stack.append(os.path.join(rel, name) if rel else name)
        elif stat.S_ISREG(st.st_mode):
            digest = file_digest(path) if contents else (st.st_size, None)
            out[rel] = ("file", mode, st.st_mtime_ns, *digest)
        else:  # pragma: no cover - the tests make no other kinds
            out[rel] = ("other", st.st_mode)
    return out


def content_manifest(root: str | bytes | os.PathLike[Any]) -> dict[bytes, tuple[Any, ...]]:
    """Only what every restore must give back bit-exact: kinds, file contents, symlink targets (no times)."""
    return {k: (v[0], v[-1]) if v[0] == "symlink" else (v[0], *v[3:]) if v[0] == "file" else (v[0],)
            for k, v in manifest(root).items()}


def diff(expected: Mapping[bytes, Any], actual: Mapping[bytes, Any], limit: int = 10) -> str:
    """A short description of how two manifests differ (for assertion messages)."""
    lines = []
    for k in sorted(set(expected) | set(actual)):
        if expected.get(k) != actual.get(k):
            lines.append(f"  {k!r}: expected {expected.get(k)!r}, got {actual.get(k)!r}")
    more = f"\n  ... {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def restored_root(target: str | os.PathLike[str], original: str) -> str:
    """Where restore puts the item ``original`` (an absolute path): ``target/<original without the slash>``."""
    return os.path.join(os.fspath(target), original.lstrip("/"))


# --- repository layout ------------------------------------------------------------------------------------------


def objects(repo: str | os.PathLike[str], kind: str) -> dict[str, str]:
    """The objects of one kind (``data``, ``index``, ``snapshots``, ``locks``, ``keys``), name -> file path.

    Packs are named by their id (the file name under ``data/<2 hex>/``).
    """
    top = os.path.join(os.fspath(repo), kind)
    out = {}
    for dirpath, _dirs, files in os.walk(top):
        for f in files:
            out[f] = os.path.join(dirpath, f)
    return out


def repo_bytes(repo: str | os.PathLike[str], kind: str = "data") -> int:
    return sum(os.path.getsize(p) for p in objects(repo, kind).values())


def flip_byte(path: str | os.PathLike[str], offset: int) -> int:
    """XORs the byte at ``offset`` (negative: from the end) with 0xFF; returns the absolute offset."""
    size = os.path.getsize(path)
    pos = offset % size
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))
    return pos


# --- child processes --------------------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this one's, with the password and without progress bars."""
    env = {k: v for k, v in os.environ.items() if k not in ("FERROLAB_PASSWORD_FILE", "FERROLAB_REPOSITORY")}
    env["FERROLAB_PASSWORD"] = PASSWORD
    env.update(extra)
    return env


def spawn(command: str, *args: str | os.PathLike[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Starts ``python backup_helpers.py command args...``."""
    argv = [sys.executable, os.path.join(HERE, "backup_helpers.py"), command, *map(os.fspath, args)]
    popen.setdefault("env", child_env())
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(argv, **popen)


def cli(*args: str | os.PathLike[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Starts ``python -m ferrolab backup ARGS...``."""
    popen.setdefault("env", child_env())
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "ferrolab", "backup", *map(os.fspath, args)], **popen)


def wait_for(paths: Iterable[str | os.PathLike[str]], proc: subprocess.Popen[bytes] | None = None,
             timeout: float = 60.0) -> None:
    """Waits until every path exists (failing early when ``proc`` exits first)."""
    deadline = time.monotonic() + timeout
    paths = list(paths)
    while not all(os.path.exists(p) for p in paths):
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"child exited with {proc.returncode} before {paths}: {out!r} {err!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {paths}")
        time.sleep(0.005)


def kill(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILLs a child (if still running) and reaps it (a zombie would still count as alive for the locks)."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()
    return proc.returncode


def _vm_hwm() -> int | None:
    """This process's peak RSS in bytes (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return None  # pragma: no cover


def _open_repo(url: str) -> Any:
    import ferrolab as fl

    return fl.backup.Repository.open(url)


def _main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "hold":
        repo_url, path, ready = args
        repo = _open_repo(repo_url)

        def hold(info: dict[str, Any]) -> None:
            open(ready, "w").close()
            while True:
                time.sleep(60)

        repo.backup(path, progress=hold)
        return 3  # pragma: no cover - never reached
    if command == "together":
        repo_url, path, ready, other = args
        repo = _open_repo(repo_url)
        seen: list[dict[str, Any]] = []

        def together(info: dict[str, Any]) -> None:
            if not seen:  # the "scan" report: the lock is held and the index loaded
                seen.append(info)
                open(ready, "w").close()
                wait_for([other], timeout=60)

        snap = repo.backup(path, progress=together)
        print(json.dumps({"id": snap.id, "added_bytes": snap.added_bytes}))
        return 0
    if command == "big":
        step, repo_url, path, *rest = args
        repo = _open_repo(repo_url)
        if step == "backup":
            snap = repo.backup(path)
            result = {"id": snap.id, "bytes": snap.bytes, "added_bytes": snap.added_bytes}
        else:
            result = repo.restore("latest", target=rest[0])
        result["vm_hwm"] = _vm_hwm()
        print(json.dumps(result))
        return 0
    if command == "measure":
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        out, err = child.stdout.read(), child.stderr.read()  # type: ignore[union-attr]
        _pid, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
        print(json.dumps({"status": child.returncode, "maxrss": usage.ru_maxrss * 1024, "stdout": out.decode(),
                          "stderr": err.decode()}))
        return 0
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
