"""``ferrolab.CircuitOpenError``, run once by the extension module when it loads (``rust/ferrolab-py/src/breaker.rs``).

PyO3 cannot subclass an exception on the stable ABI of Python 3.11 (``abi3-py311``), so the class is Python; its
properties read the exception's args, so that raising builds no instance dict and pickling needs nothing more.
"""


def make(base):
    class CircuitOpenError(base):
        """A circuit breaker rejected the call: it is open, forced open, or half-open with every trial call in flight.

        ``name`` is the breaker's name, ``retry_after`` the seconds until it admits calls again (None when forced
        open) and ``last_failure`` the exception that last counted as a failure (also the ``__cause__``), or None.
        """

        __module__ = "ferrolab"
        __qualname__ = "CircuitOpenError"

        def _arg(self, i):
            a = self.args
            return a[i] if len(a) > i else None

        @property
        def name(self):
            """The name of the breaker that rejected the call."""
            return self._arg(1)

        @property
        def retry_after(self):
            """Seconds until the breaker admits calls again (0.0 while half-open trials run; None when forced open)."""
            return self._arg(2)

        @property
        def last_failure(self):
            """The exception that last counted as a failure (also ``__cause__``), or None."""
            return self._arg(3)

        def __str__(self):
            a = self.args
            if not a:
                return ""
            msg = str(a[0])
            r = a[2] if len(a) == 4 else None
            if isinstance(r, (int, float)) and r > 0:
                return f"{msg}; retry after {r:.3f} s"
            return msg

    return CircuitOpenError
