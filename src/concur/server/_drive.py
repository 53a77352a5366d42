"""One connection's conversation, written once and run by every model.

``drive`` is the blocking loop (thread, process and prefork models): recv →
``session.feed`` → sendall, with the idle timeout as the socket timeout.
``drive_async`` is the asyncio loop (async and hybrid models); the hybrid
model passes an ``Offload`` so that a handler which blocks runs on a thread
instead of stalling the event loop.

Both end with one log line per connection: peer, duration, messages, and how
it ended.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .protocol import Reply, Session

log = logging.getLogger("concur.server")

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
    stopping: Callable[[], bool],
    before_close: Callable[[], None] | None = None,
) -> str:
    """Serve one connection to its end; return how it ended (also logged).

    ``before_close`` runs just before the socket closes: a prefork worker
    says it is free there, before its client can see the close and connect
    again.
    """
    started, session, how = time.monotonic(), None, "client closed"
    conn.settimeout(idle_timeout)
    try:
        session = handler(peer)
        while True:
            data = conn.recv(READ_SIZE)
            if not data:
                if stopping():
                    how = "closed by server"
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
        how = "closed by server" if stopping() else f"socket error: {exc}"
    except Exception:
        how = "handler failed"
        log.exception("the session for %s failed; closing its connection", peer)
    finally:
        if session is not None:
            try:
                session.end()
            except Exception:
                log.exception("the session for %s failed in end()", peer)
        if before_close is not None:
            before_close()
        conn.close()
        logline(peer, started, session, how)
    return how


class Offload:
    """Run ``session.feed`` on the loop while it is quick, on threads once it is not.

    The event loop must never wait on a handler that blocks. Every call is
    timed: on the threads, a streak of calls under ``QUICK`` seconds moves
    the handler onto the loop (no thread hand-off: the fastest path); on the
    loop, one call over ``QUICK`` sends it back to the threads and doubles
    the streak needed to return. A handler that blocks now and then thus
    stalls the loop for a vanishing share of its calls.
    """

    QUICK = 0.002
    STREAK = 32

    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="concur-server-handler")
        self.inline = False
        self._streak = 0
        self._needed = self.STREAK

    async def feed(self, session: Session, data: bytes) -> Reply:
        started = time.perf_counter()
        if self.inline:
            reply = session.feed(data)
            if time.perf_counter() - started > self.QUICK:
                self.inline = False
                self._streak = 0
                self._needed = min(self._needed * 2, 1 << 20)
            return reply
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self.pool, session.feed, data)
        if time.perf_counter() - started < self.QUICK:
            self._streak += 1
            self.inline = self._streak >= self._needed
        else:
            self._streak = 0
        return reply

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


async def drive_async(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Callable[[str], Session],
    idle_timeout: float,
    offload: Offload | None = None,
) -> str:
    """The asyncio twin of ``drive``."""
    peer = peer_name(writer.get_extra_info("peername"))
    started, session, how = time.monotonic(), None, "client closed"
    try:
        session = handler(peer)
        while True:
            data = await asyncio.wait_for(reader.read(READ_SIZE), idle_timeout)
            if not data:
                break
            reply = session.feed(data) if offload is None else await offload.feed(session, data)
            if reply.data:
                writer.write(reply.data)
                await writer.drain()
            if reply.close:
                how = "session ended"
                break
    except asyncio.TimeoutError:
        how = "idle timeout"
    except asyncio.CancelledError:
        how = "closed by server"
    except OSError as exc:
        how = f"socket error: {exc}"
    except Exception:
        how = "handler failed"
        log.exception("the session for %s failed; closing its connection", peer)
    finally:
        if session is not None:
            try:
                session.end()
            except Exception:
                log.exception("the session for %s failed in end()", peer)
        await close_writer(writer)
        logline(peer, started, session, how)
    return how


async def close_writer(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    except (OSError, asyncio.CancelledError):
        pass
