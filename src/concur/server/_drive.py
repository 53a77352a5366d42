"""One connection's conversation, written once and run by every model.

``drive`` is the blocking loop (thread, process and prefork models): recv →
``session.feed`` → sendall, with the idle timeout as the socket timeout.
Its event-loop twin is ``_loop.Connection`` (async and hybrid models).
Both end with one log line per connection: peer, duration, messages, and how
it ended.

This module imports neither threading nor logging: the master of the
process model and its children use it, and a process without threading
forks with a fraction of the page faults (threading's at-fork hooks touch
pages that the fork then has to copy). ``log`` writes to the
``concur.server`` logger, or, in those processes, straight to the caller.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from .protocol import Session

INFO, WARNING, ERROR = 20, 30, 40  # the logging module's levels


class Log:
    """The few Logger methods concur.server uses.

    By default each call goes to ``logging.getLogger("concur.server")``
    (imported on first use). ``to_events(emit, level)`` sends records at or
    above ``level`` to ``emit(level, text)`` instead, without logging.
    """

    def __init__(self) -> None:
        self._emit: Callable[[int, str], object] | None = None
        self._level = INFO

    def to_events(self, emit: Callable[[int, str], object], level: int) -> None:
        self._emit, self._level = emit, level

    def log(
        self, level: int, msg: str, *args: Any, exc_info: Any = None, stacklevel: int = 1
    ) -> None:
        if self._emit is None:
            import logging

            logging.getLogger("concur.server").log(
                level, msg, *args, exc_info=exc_info, stacklevel=stacklevel + 1
            )  # the record names the caller's function and line, not this one
            return
        if level < self._level:
            return
        text = msg % args if args else msg
        if exc_info:
            import traceback

            if isinstance(exc_info, BaseException):
                lines = traceback.format_exception(exc_info)
            else:
                lines = traceback.format_exc().splitlines(keepends=True)
            text += "\n" + "".join(lines).rstrip()
        self._emit(level, text)

    def info(self, msg: str, *args: Any) -> None:
        self.log(INFO, msg, *args, stacklevel=2)

    def warning(self, msg: str, *args: Any) -> None:
        self.log(WARNING, msg, *args, stacklevel=2)

    def error(self, msg: str, *args: Any, exc_info: Any = None) -> None:
        self.log(ERROR, msg, *args, exc_info=exc_info, stacklevel=2)

    def exception(self, msg: str, *args: Any) -> None:
        self.log(ERROR, msg, *args, exc_info=True, stacklevel=2)


log = Log()

BUSY = b"busy: too many connections; try again later\n"
READ_SIZE = 64 * 1024


def logline(peer: str, started: float, session: Session | None, how: str) -> None:
    log.info(
        "connection peer=%s duration=%.3fs messages=%d ended=%s",
        peer,
        time.monotonic() - started,
        session.messages if session is not None else 0,
        how,
    )


def end_session(session: Session | None, peer: str) -> None:
    """Tell the session its connection is over; a failure there is logged, not raised."""
    if session is not None:
        try:
            session.end()
        except Exception:
            log.exception("the session for %s failed in end()", peer)


def refuse(conn: socket.socket) -> None:
    """The short busy reply, then close: a client at the limit never hangs."""
    try:
        conn.sendall(BUSY)
    except OSError:
        pass
    conn.close()


def peer_name(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "?")


def drive(
    conn: socket.socket,
    peer: str,
    handler: Callable[[str], Session],
    idle_timeout: float,
    closed_by: Callable[[], str | None],
    before_close: Callable[[], None] | None = None,
    silent: Callable[[bool], None] | None = None,
) -> str:
    """Serve one connection to its end; return how it ended (also logged).

    ``closed_by`` says why the server closed the connection, if it did
    (its socket was shut down to wake this loop). ``before_close`` runs
    just before the socket closes: a prefork worker says it is free there,
    before its client can see the close and connect again. ``silent(True)``
    is called whenever the loop starts waiting for the client, and
    ``silent(False)`` when it stops (process, prefork: ``_backlog``).
    """
    started, session, how = time.monotonic(), None, "client closed"
    conn.settimeout(idle_timeout)
    try:
        session = handler(peer)
        while True:
            if silent is not None:
                silent(True)
            data = conn.recv(READ_SIZE)
            if silent is not None:
                silent(False)
            if not data:
                how = closed_by() or how
                break
            reply = session.feed(data)
            if reply.data:
                conn.sendall(reply.data)
            if reply.close:
                how = "session ended"
                break
    except TimeoutError:
        how = "idle timeout"
    except OSError as exc:
        how = closed_by() or f"socket error: {exc}"
    except Exception:
        how = "handler failed"
        log.exception("the session for %s failed; closing its connection", peer)
    finally:
        if silent is not None:
            silent(False)
        end_session(session, peer)
        if before_close is not None:
            before_close()
        conn.close()
        logline(peer, started, session, how)
    return how


BACKOFF = 0.1  # seconds a server stops accepting after an accept failed
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_REMEDY = {
    errno.EMFILE: "raise the open-files limit (ulimit -n) or lower max_connections",
    errno.ENFILE: "the whole system is out of file descriptors (fs.file-max)",
    errno.ENOBUFS: "the kernel is short of socket memory",
    errno.ENOMEM: "the kernel is short of memory",
}


class AcceptErrors:
    """One server's failed accepts, however many of its processes hit them,
    told in a few lines rather than one per failure (a full accept queue
    fails thousands of times a second):

    * the first at once, with its cause and what to do about it;
    * while they go on, one line every ``REPEAT`` seconds counting them;
    * ``QUIET`` seconds after the last, one line with the total.

    ``failed(code)`` counts one; ``tick()`` says what is due and returns the
    seconds until something may be (None: all is well), for a loop's timeout.
    """

    REPEAT = 10.0
    QUIET = 2.0

    def __init__(self) -> None:
        self.total = self.untold = self.code = 0
        self.first = self.last = self.told = 0.0

    def failed(self, code: int) -> None:
        now = time.monotonic()
        if not self.total:
            self.first = self.told = now
            log.warning(
                "accept failed (%s): %s; accepting pauses %.1f s at a time until it works",
                os.strerror(code),
                _REMEDY.get(code, "the server goes on"),
                BACKOFF,
            )
        else:
            self.untold += 1
        self.total += 1
        self.last, self.code = now, code
        self.tick(now)

    def tick(self, now: float | None = None) -> float | None:
        if not self.total:
            return None
        now = time.monotonic() if now is None else now
        if now - self.last >= self.QUIET:
            log.info(
                "accepting again: %d accept%s failed (%s) over %.1f s",
                self.total,
                "s" * (self.total != 1),
                os.strerror(self.code),
                self.last - self.first,
            )
            self.total = self.untold = 0
            return None
        if self.untold and now - self.told >= self.REPEAT:
            log.warning(
                "accept still failing (%s): %d more times in the last %.0f s",
                os.strerror(self.code),
                self.untold,
                now - self.told,
            )
            self.untold, self.told = 0, now
        return max(min(self.QUIET - (now - self.last), self.REPEAT - (now - self.told)), 0.01)
