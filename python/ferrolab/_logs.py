"""Delivery of the native core's log events to :mod:`logging` (called by the native log thread).

Each event goes to the logger named by its target (``ferrolab.backup``, ``ferrolab.gpu``, ``ferrolab.ops``,
...); its structured fields become attributes of the :class:`logging.LogRecord` (as ``extra=`` does), and the
record's time is the event's.
"""

from __future__ import annotations

import logging
from typing import Any

# attributes a LogRecord already has: a field of that name is kept as ``ferrolab_<name>``
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


# reports a failure while a record is handled as logging reports a handler's (``Handler.handleError``: the
# traceback on stderr while ``logging.raiseExceptions`` is true, nothing otherwise)
_REPORTER = logging.Handler()


def emit(records: list[tuple[int, str, str, dict[str, Any], float]]) -> None:
    """Hand each record of a batch to its logger. A record whose handling raises (a handler's ``emit``, a filter)
    is reported as :meth:`logging.Handler.handleError` reports it and affects only itself, as a plain logging call
    would: the records after it are still delivered to every handler."""
    for levelno, name, message, fields, created in records:
        record = None
        try:
            logger = logging.getLogger(name)
            if not logger.isEnabledFor(levelno):
                continue
            extra = {(f"ferrolab_{k}" if k in _RESERVED else k): v for k, v in fields.items()}
            record = logger.makeRecord(name, levelno, "(native)", 0, message, (), None, extra=extra)
            record.created = created
            record.msecs = (created - int(created)) * 1000
            record.relativeCreated = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
            logger.handle(record)
        except Exception:
            if record is None:
                record = logging.makeLogRecord({"name": name, "levelno": levelno, "msg": message})
            _REPORTER.handleError(record)
