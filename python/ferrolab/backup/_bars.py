"""Progress reporting of :mod:`ferrolab.backup`: ``progress=True`` draws a tqdm bar per phase on stderr, a
callable gets the native progress dicts."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from ._args import _type_name


class _Bar:
    """A tqdm bar per phase, fed with the native progress dicts."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._phase: str | None = None

    def __call__(self, info: Mapping[str, Any]) -> None:
        phase = str(info.get("phase") or "")
        done = int(info.get("done_bytes") or 0)
        total = int(info.get("total_bytes") or 0)
        if self._bar is None or phase != self._phase:
            self.close()
            from tqdm import tqdm

            self._bar = tqdm(
                total=max(total, done) or None, desc=phase, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, dynamic_ncols=True, disable=False,
            )
            self._phase = phase
        bar = self._bar
        if total and bar.total != max(total, done):
            bar.total = max(total, done)
        if done >= bar.n:
            bar.update(done - bar.n)
        else:
            bar.n = done
            bar.refresh()
        done_files = int(info.get("done_files") or 0)
        total_files = int(info.get("total_files") or 0)
        bar.set_postfix_str(f"{done_files}/{total_files} files" if total_files else f"{done_files} files")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress(func: str, progress: Any) -> tuple[Callable[[dict[str, Any]], None] | None, Callable[[], None]]:
    """``(callback for the native call, close)`` for ``progress=False | True | callable``."""
    if progress is None or progress is False:
        return None, lambda: None
    if progress is True:
        bar = _Bar()
        return bar, bar.close
    if callable(progress):
        return progress, lambda: None
    raise TypeError(f"{func}(): argument 'progress' must be a bool or a callable, got {_type_name(progress)}")
