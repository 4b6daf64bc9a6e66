"""Submodules whose code runs on first use, without a package-level ``__getattr__``.

``ferrolab.ops`` brings NumPy, ``ferrolab.health`` asyncio and ``ferrolab.metrics`` urllib: commands such as
``ferrolab backup`` need none of them, so ``import ferrolab`` does not run those modules. A module ``__getattr__``
would do that, but CPython's attribute cache does not serve a module that has one: every ``fl.ops.sum(x)`` would take
the generic lookup, about 35 ns more per call. Instead each such submodule is a real module object from the start,
on the package and in :data:`sys.modules`; its first attribute access runs its code into that same object, which then
becomes a plain module. ``fl.ops``, ``from ferrolab import ops`` and ``import ferrolab.ops`` therefore all name one
object, as with an eager import.

This is :class:`importlib.util.LazyLoader`'s scheme, with a lock: on Python 3.11 the standard one can run a module
twice when two threads touch it at once.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Iterable, MutableMapping
from importlib.machinery import ModuleSpec, PathFinder
from importlib.util import module_from_spec

_ModuleType = types.ModuleType


class _State:
    __slots__ = ("lock", "loading")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.loading = False


_STATES: dict[str, _State] = {}


def _load(mod: _ModuleType) -> None:
    spec: ModuleSpec = _ModuleType.__getattribute__(mod, "__spec__")
    state = _STATES[spec.name]
    with state.lock:
        # another thread may have loaded it while this one waited; the thread running the module's code comes back
        # here for the attributes the import system reads (``__dict__``, ``__spec__``), and gets them as they are
        if type(mod) is not _Pending or state.loading:
            return
        state.loading = True
        spec._initializing = True  # type: ignore[attr-defined]  # what import statements elsewhere wait on
        try:
            assert spec.loader is not None
            spec.loader.exec_module(mod)
            _ModuleType.__setattr__(mod, "__class__", _ModuleType)
        finally:
            spec._initializing = False  # type: ignore[attr-defined]
            state.loading = False  # a failed run is tried again on the next access, as a failed import is


class _Pending(_ModuleType):
    """A submodule whose code has not run yet (any attribute access runs it)."""

    def __getattribute__(self, name: str) -> object:
        _load(self)
        return _ModuleType.__getattribute__(self, name)

    def __setattr__(self, name: str, value: object) -> None:
        _load(self)
        _ModuleType.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        _load(self)
        _ModuleType.__delattr__(self, name)


def attach(namespace: MutableMapping[str, object], names: Iterable[str]) -> None:
    """Bind each submodule in ``names`` of the package whose globals are ``namespace``, to be run on first use."""
    package = str(namespace["__name__"])
    path = namespace["__path__"]
    for name in names:
        full = f"{package}.{name}"
        mod = sys.modules.get(full)
        if mod is None:
            spec = PathFinder.find_spec(full, path)  # type: ignore[arg-type]
            if spec is None or spec.loader is None:
                raise ImportError(f"ferrolab: submodule {full} not found", name=full)
            mod = module_from_spec(spec)
            _STATES[full] = _State()
            mod.__class__ = _Pending
            sys.modules[full] = mod
        namespace[name] = mod
