"""The event-loop side of a connection (async and hybrid models).

``Connection`` is ``_drive.drive``'s twin, an asyncio protocol; ``Offload``
moves a handler that blocks onto threads so it cannot stall the loop.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..threads import ThreadPool
from ._drive import BACKOFF, BUSY, AcceptErrors, end_session, log, logline, peer_name
from .protocol import Reply, Session

if TYPE_CHECKING:
    from ._children import AcceptRelay


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
        # concur's own pool: daemon threads, so a handler that never returns
        # cannot hold the interpreter at exit (ThreadPoolExecutor's would)
        self.pool = ThreadPool(threads, thread_name_prefix="concur-server-handler")
        self.inline = False
        self._streak = 0
        self._needed = self.STREAK

    def ran_inline(self, seconds: float) -> None:
        if seconds > self.QUICK:
            self.inline = False
            self._streak = 0
            self._needed = min(self._needed * 2, 1 << 20)

    def ran_in_pool(self, seconds: float) -> None:
        if seconds < self.QUICK:
            self._streak += 1
            self.inline = self._streak >= self._needed
        else:
            self._streak = 0

    def close(self, join: float = 0.0) -> None:
        """Stop the pool; wait up to ``join`` s for handlers still running
        (a handler that never returns is left behind, not waited on)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + join
        for slot in list(self.pool._slots.values()):
            slot.thread.join(max(deadline - time.monotonic(), 0))


class Connection(asyncio.Protocol):
    """One connection on an event loop (the async and hybrid models).

    A protocol, not streams: ``data_received`` feeds the session and writes
    the reply with no coroutine or task per message. The idle timeout is one
    timer per connection that re-arms itself from the time of the last read,
    so a message costs no timer work at all. When the client stops reading,
    the connection stops reading too (``pause_writing``), so a slow reader
    cannot make the server buffer without bound. With an ``Offload``, a slow
    handler runs on a thread while reading is paused, which keeps replies
    in order.
    """

    def __init__(self, server: LoopServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.peer = "?"
        self.started = time.monotonic()
        self.last = self.loop.time()
        self.how = "client closed"
        self.timer: asyncio.TimerHandle | None = None
        self.admitted = False
        self.feeding = False  # a handler call is running on a thread
        self.backlog: list[bytes] = []
        self.write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = peer_name(transport.get_extra_info("peername"))
        if not self.server.admit(self):
            transport.write(BUSY)
            transport.close()
            return
        self.admitted = True
        try:
            self.session = self.server.handler(self.peer)
        except Exception:
            self.fail()
            return
        self.timer = self.loop.call_later(self.server.idle_timeout, self.check_idle)

    def check_idle(self) -> None:
        idle_for = self.loop.time() - self.last
        if idle_for >= self.server.idle_timeout and not self.feeding:
            self.end("idle timeout")
        else:
            self.timer = self.loop.call_later(
                max(self.server.idle_timeout - idle_for, 0.001), self.check_idle
            )

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        if self.feeding or self.session is None:
            self.backlog.append(data)
            return
        offload = self.server.offload
        if offload is None:
            self.feed(data)
        elif offload.inline:
            started = time.perf_counter()
            self.feed(data)
            offload.ran_inline(time.perf_counter() - started)
        else:
            self.feed_on_thread(offload, data)

    def feed(self, data: bytes) -> None:
        assert self.session is not None
        try:
            reply = self.session.feed(data)
        except Exception:
            self.fail()
            return
        self.send(reply)

    def send(self, reply: Reply) -> None:
        assert self.transport is not None
        if reply.data:
            self.transport.write(reply.data)
        if reply.close:
            self.end("session ended")

    def feed_on_thread(self, offload: Offload, data: bytes) -> None:
        assert self.session is not None
        assert self.transport is not None
        self.feeding = True
        self.transport.pause_reading()
        future = self.loop.run_in_executor(offload.pool, _timed, self.session.feed, data)

        def done(fut: asyncio.Future[tuple[Reply, float]]) -> None:
            self.feeding = False
            if self.transport is None or self.transport.is_closing() or fut.cancelled():
                return
            error = fut.exception()
            if error is not None:
                self.fail(error)
                return
            reply, seconds = fut.result()
            offload.ran_in_pool(seconds)
            self.send(reply)
            if self.transport.is_closing():
                return
            if not self.write_paused:
                self.transport.resume_reading()
            if self.backlog:
                pending = b"".join(self.backlog)
                self.backlog.clear()
                self.data_received(pending)

        future.add_done_callback(done)

    def fail(self, error: BaseException | None = None) -> None:
        log.error(
            "the session for %s failed; closing its connection",
            self.peer,
            exc_info=error if error is not None else True,
        )
        self.end("handler failed")

    def end(self, how: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.how = how
            self.transport.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.feeding:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.admitted:
            return
        if exc is not None and self.how == "client closed":
            self.how = f"socket error: {exc}"
        end_session(self.session, self.peer)
        self.server.release(self)
        logline(self.peer, self.started, self.session, self.how)


def _timed(feed: Callable[[bytes], Reply], data: bytes) -> tuple[Reply, float]:
    """The handler's own time on its thread, without the queueing around it."""
    started = time.perf_counter()
    reply = feed(data)
    return reply, time.perf_counter() - started


class LoopServer:
    """What the connections of one event loop share: the handler, the limits,
    the open connections, and (hybrid) the thread pool for slow handlers.

    It accepts on its own rather than through ``loop.create_server``, whose
    accept loop, out of file descriptors, reports the error once per
    connection waiting in the backlog and schedules as many retries, each of
    which does it again: thousands of tracebacks a second. Here a failed
    accept is counted in ``errors`` (a server's ``AcceptErrors``, or a
    child's relay to its master's) and accepting pauses for ``BACKOFF``.
    """

    ACCEPTS = 100  # per wake-up: a busy listener must not starve the connections

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: Callable[[str], Session],
        idle_timeout: float,
        admit: Callable[[Connection], bool],
        release: Callable[[Connection], None],
        errors: AcceptErrors | AcceptRelay,
        offload: Offload | None = None,
    ) -> None:
        self.loop = loop
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.offload = offload
        self.errors = errors
        self._admit = admit
        self._release = release
        self.open: set[Connection] = set()
        self.sock: socket.socket | None = None
        self._connecting: set[asyncio.Task[Any]] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self._ticking: asyncio.TimerHandle | None = None
        self.deadline = float("inf")  # when stopping: the end of the grace
        self.hurried = False

    def admit(self, conn: Connection) -> bool:
        if not self._admit(conn):
            return False
        self.open.add(conn)
        return True

    def release(self, conn: Connection) -> None:
        self.open.discard(conn)
        self._release(conn)

    def start(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        assert self.sock is not None
        for _ in range(self.ACCEPTS):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                self.errors.failed(exc.errno or 0)
                self.loop.remove_reader(self.sock.fileno())
                self._later(BACKOFF, self._resume)
                return
            task = self.loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: Connection(self), conn)
        except OSError:  # the client left before its transport was made
            conn.close()

    def _resume(self) -> None:
        if self.sock is not None and self.sock.fileno() >= 0:
            self.loop.add_reader(self.sock.fileno(), self._accept)
            if self._ticking is None:
                self._tick()

    def _tick(self) -> None:
        self._ticking = None
        wait = self.errors.tick()  # in the end, the line that says accepting works again
        if wait is not None:
            self._ticking = self._later(wait, self._tick)

    def _later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        self._timers = [timer for timer in self._timers if not timer.cancelled()]
        timer = self.loop.call_later(delay, callback)
        self._timers.append(timer)
        return timer

    def stop_accepting(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self.sock is not None and self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()  # refused from now on, not left in a backlog

    async def stop(self, grace: float, join: float = 0.0) -> None:
        """Stop accepting; let sessions finish for ``grace`` s (or until
        ``hurry``); close the rest; wait up to ``join`` s for handler threads."""
        self.stop_accepting()
        self.deadline = min(self.deadline, time.monotonic() + grace)
        while self.open and time.monotonic() < self.deadline:
            await asyncio.sleep(0.01)
        self.close_all()
        while self.open and time.monotonic() < self.deadline + 5:
            await asyncio.sleep(0.01)
        if self.offload is not None:
            self.offload.close(0.0 if self.hurried else join)

    def hurry(self) -> None:
        """End the grace now: close the open sessions, wait for no handler."""
        self.hurried = True
        self.deadline = min(self.deadline, time.monotonic())

    def close_all(self) -> None:
        for conn in list(self.open):
            conn.end("closed by server")
