"""Submodules whose code runs on first use, without a package-level ``__getattr__``.

``ferrolab.ops`` brings NumPy, ``ferrolab.health`` asyncio and ``ferrolab.metrics`` urllib: commands such as
``ferrolab backup`` need none of them, so ``import ferrolab`` does not run those modules. A module ``__getattr__``
would do that, but CPython's attribute cache does not serve a module that has one: every ``fl.ops.sum(x)`` would take
the generic lookup, about 35 ns more per call. Instead each such submodule is a real module object from the start,
on the package and in :data:`sys.modules`; its first use runs its code into that same object, which then becomes a
plain module. ``fl.ops``, ``from ferrolab import ops`` and ``import ferrolab.ops`` therefore all name one object, as
with an eager import.

This is :class:`importlib.util.LazyLoader`'s scheme, with a lock (on Python 3.11 the standard one can run a module
twice when two threads touch it at once), and with the differences users of an eager import may notice:

* the module's code runs on the first access to any attribute other than the import system's own (``__spec__``,
  ``__path__``, ``__name__``, ``__file__``, ``__loader__``, ``__package__``, ``__cached__``), so an import
  statement binds it without running it, and an error in its code is raised at that first access (and the next
  access runs the code again, in a fresh namespace);
* a submodule of a pending package (``ferrolab.backup._args``) imported by name runs before the package's own
  code, which runs on the package's first use;
* the lock is not the import system's, so its deadlock detection does not see it: a module's code that waits for a
  thread using the same module hangs (ferrolab's modules do not).
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from collections.abc import Iterable, MutableMapping

_ModuleType = types.ModuleType
# what the import system reads of a module (to find a package's submodules, or whether a module is being
# initialized), and what says which module it is: none of them runs the module
_OWN = frozenset({"__spec__", "__path__", "__name__", "__file__", "__loader__", "__package__", "__cached__",
                  "__class__"})


class _State:
    """The lock of a pending module, and its namespace before its code ran (restored when the code fails)."""

    __slots__ = ("lock", "loading", "initial")

    def __init__(self, initial: dict[str, object]) -> None:
        self.lock = threading.RLock()
        self.loading = False
        self.initial = initial


def load(mod: _ModuleType) -> None:
    """Runs the code of a pending submodule (nothing for a module that has run)."""
    if type(mod) is not _Pending:
        return
    ns = _ModuleType.__getattribute__(mod, "__dict__")
    spec = ns["__spec__"]
    state: _State = spec.loader_state
    with state.lock:
        # another thread may have run it while this one waited; the thread running the module's code comes back
        # here for the attributes that code reads of its own module, and gets them as they are
        if type(mod) is not _Pending or state.loading:
            return
        state.loading = True
        spec._initializing = True  # what import statements in other threads look at
        try:
            spec.loader.exec_module(mod)
            _ModuleType.__setattr__(mod, "__class__", _ModuleType)
        except BaseException:
            ns.clear()  # a failed run leaves nothing half made; the next access runs the code again
            ns.update(state.initial)
            raise
        finally:
            spec._initializing = False
            state.loading = False


class _Pending(_ModuleType):
    """A submodule whose code has not run yet (its first use runs it)."""

    def __getattribute__(self, name: str) -> object:
        if name not in _OWN:
            load(self)
        return _ModuleType.__getattribute__(self, name)

    def __setattr__(self, name: str, value: object) -> None:
        # the import system binds a submodule of a pending package on it: that does not run the package
        own = _ModuleType.__getattribute__(self, "__name__")
        if not (isinstance(value, _ModuleType) and getattr(value, "__name__", None) == f"{own}.{name}"):
            load(self)
        _ModuleType.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        load(self)
        _ModuleType.__delattr__(self, name)

    def __repr__(self) -> str:
        return f"<module {_ModuleType.__getattribute__(self, '__name__')!r} (not run yet)>"


def attach(namespace: MutableMapping[str, object], names: Iterable[str]) -> None:
    """Bind each submodule in ``names`` of the package whose globals are ``namespace``, to be run on first use."""
    package = str(namespace["__name__"])
    for name in names:
        full = f"{package}.{name}"
        mod = sys.modules.get(full)
        if mod is None:
            spec = importlib.util.find_spec(full)  # through sys.meta_path, as an import would look for it
            if spec is None or spec.loader is None:
                raise ImportError(f"ferrolab: submodule {full} not found", name=full)
            mod = importlib.util.module_from_spec(spec)
            spec.loader_state = _State(dict(mod.__dict__))
            mod.__class__ = _Pending
            sys.modules[full] = mod
        namespace[name] = mod
