"""Worker log records, handled by the caller's logging set-up.

A worker started by spawn or forkserver has a fresh ``logging`` module: no
handlers, default levels, so its records vanish (INFO) or print bare
(WARNING, through ``logging.lastResort``). A forked one inherits handlers
that then write from several processes at once. Instead each worker gets:

* the caller's levels (``levels()``, taken when the worker starts: the
  root logger's and every logger's that has one set), so a record the
  caller would drop is not even made;
* one handler on its root logger (``Forwarder``) that sends each record to
  the caller over the worker's reply pipe, with its message formatted and
  its traceback as text, keeping the worker's pid and process name;

and the pool's supervisor hands each record to the logger of the same name
in the caller (``handle``), whose handlers, filters and format apply as if
the record had been logged there. ``print()`` is untouched: workers share
the caller's stdout and stderr.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from typing import Any

Levels = dict[str, int]

_BASIC = (str, int, float, bool, type(None))


def levels() -> Levels:
    """The caller's logging levels: ``""`` for the root, then each named
    logger that has a level of its own."""
    found: Levels = {"": logging.getLogger().level}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            found[name] = logger.level
    return found


class Forwarder(logging.Handler):
    """Sends each record through ``send(body)`` as a pickled attribute dict."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(pickle.dumps(_portable(record, self), pickle.HIGHEST_PROTOCOL))
        except Exception:
            self.handleError(record)


def _portable(record: logging.LogRecord, handler: logging.Handler) -> dict[str, Any]:
    attrs = dict(record.__dict__)
    attrs["msg"] = record.getMessage()
    attrs["args"] = None
    if record.exc_info:
        attrs["exc_text"] = (handler.formatter or logging.Formatter()).formatException(
            record.exc_info
        )
    attrs["exc_info"] = None
    for key, value in attrs.items():
        if not isinstance(value, _BASIC):
            try:
                pickle.dumps(value)
            except Exception:
                attrs[key] = repr(value)
    return attrs


def install(send: Callable[[bytes], None], wanted: Levels) -> None:
    """In a worker: forward every record to the caller, at its levels."""
    root = logging.getLogger()
    for logger in [root, *logging.Logger.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            for handler in list(logger.handlers):  # inherited through fork
                logger.removeHandler(handler)
    for name, level in wanted.items():
        logging.getLogger(name or None).setLevel(level)
    root.addHandler(Forwarder(send))


def handle(body: bytes | memoryview) -> None:
    """In the caller: log a worker's record through the caller's set-up."""
    record = logging.makeLogRecord(pickle.loads(body))
    logger = logging.getLogger(record.name if record.name != "root" else None)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)
