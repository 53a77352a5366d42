"""What the master's children do, one small strategy object per model.

The master (``_master.Master``) runs the loop every model shares: listening,
the busy reply, stopping, reaping. Where the models differ, it asks its
model:

    start()           the first children
    replenish()       keep children ready (process: spares; prefork: N)
    gone(pid, code)   a child was reaped (hybrid: re-fork its slot)
    open_sessions()   how many connections the children serve now
    heard(pid, kind)  a child's record on the state pipe (prefork: the backlog)
    backlog           (set on the master) process, prefork: the clients
                      waiting for a free child; hybrid children say busy
    full_title        whether a child rewrites its whole command line

and each model's children run its ``serve`` method after the fork.
"""

from __future__ import annotations

import json
import mmap
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._backlog import IDLE_GIVES_WAY, Backlog
from ._drive import BACKOFF, OUT_OF_FDS, WARNING, drive, log, peer_name

if TYPE_CHECKING:
    from ._drive import AcceptErrors
    from ._master import Master

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}  # USR1: give way
GAVE_WAY = "idle, gave way to a waiting client"
STATE = struct.Struct("iBB")  # pid, kind (FREE, ...), length of the text that follows


class Events:
    """The datagram socket to the caller, shared by the master and every child.

    It never blocks. A server process that waited for the caller to read
    would stop serving: one caller whose logging stalls (a paused terminal,
    a full pipe) and every child hangs in its next log line, its client
    with it. So the socket is non-blocking (one open file for all the
    server's processes, so one call sets it for all) with a send buffer
    that holds a few thousand log lines; a record it has no room for is
    dropped and counted (``on_drop``), and the master says how many, once
    the caller reads again.
    """

    LIMIT = 60_000  # bytes in one datagram; the caller reads up to 64 KiB

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        except OSError:
            pass  # the system's default: a few hundred lines
        self.sock = sock
        self.dropped = 0  # the master's count, told with the next report
        self.next_report = 0.0
        self.on_drop: Callable[[], None] = self.count_drop

    def count_drop(self) -> None:
        self.dropped += 1

    def send(self, event: dict[str, Any], counted: bool = True) -> bool:
        """Send ``event`` if there is room now; False if it was dropped."""
        try:
            self.sock.send(json.dumps(event, ensure_ascii=False).encode())
        except BlockingIOError:
            if counted:
                self.on_drop()
            return False
        except OSError:  # the caller is gone; nobody to tell
            return False
        return True

    def log(self, level: int, text: str, counted: bool = True) -> bool:
        data = json.dumps(text, ensure_ascii=False).encode()
        while len(data) > self.LIMIT:  # a traceback of 1 MB still gets its start told
            text = text[: len(text) * self.LIMIT // len(data) - 64] + " [cut]"
            data = json.dumps(text, ensure_ascii=False).encode()
        return self.send({"t": "log", "level": level, "msg": text}, counted)

    def report_drops(self) -> None:
        """In the master, at most once a second: say how many records were
        dropped, if the caller reads again (a report dropped is not counted)."""
        now = time.monotonic()
        if not self.dropped or now < self.next_report:
            return
        self.next_report = now + 1.0
        dropped = self.dropped
        told = self.log(
            WARNING,
            f"{dropped} log record{'s' * (dropped != 1)} of the server's processes "
            f"dropped: the calling process (pid {os.getppid()}) did not read them in "
            "time (is its logging blocked or slow?); serving went on",
            counted=False,
        )
        if told:
            self.dropped -= dropped


# What a child writes on the master's state pipe (each record < PIPE_BUF, so
# written whole): its pid, one of these, and the text that follows (the
# peer's address; the errno of a failed accept).
FREE, SERVING, LOG_DROPPED, ACCEPT_FAILED, ENDED = 0, 1, 2, 3, 4  # ENDED: one-shot, about to exit


def state_record(pid: int, kind: int, text: str = "") -> bytes:
    data = text.encode()[:200]
    return STATE.pack(pid, kind, len(data)) + data


def state_records(data: bytes) -> Iterator[tuple[int, int, str]]:
    """The (pid, kind, text) of each record in what the master read."""
    offset = 0
    while offset + STATE.size <= len(data):
        pid, kind, size = STATE.unpack_from(data, offset)
        offset += STATE.size
        yield pid, kind, data[offset : offset + size].decode(errors="replace")
        offset += size


def tell(fd: int, record: bytes) -> None:
    """A child's record to the master, on the state pipe."""
    try:
        os.write(fd, record)
    except OSError:  # the master is gone: this child is about to be too
        pass


class AcceptRelay:
    """In a child, in place of the master's ``AcceptErrors``: each failed
    accept goes to the master, which tells them for the whole server."""

    def __init__(self, fd: int) -> None:
        self.fd, self.pid = fd, os.getpid()

    def failed(self, code: int) -> None:
        tell(self.fd, state_record(self.pid, ACCEPT_FAILED, str(code)))

    def tick(self) -> float | None:
        return None  # the master's own loop ticks


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"process crashed ({name})"
    return f"process exited with code {code}"


def accept_one(
    listener: socket.socket, errors: AcceptErrors | AcceptRelay
) -> tuple[socket.socket, Any] | OSError | None:
    """A blocking connection and its address; None when another process took
    it first; the error (counted in ``errors``) when out of file descriptors."""
    try:
        conn, address = listener.accept()
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in OUT_OF_FDS:
            errors.failed(exc.errno)
            return exc
        raise
    conn.setblocking(True)
    return conn, address


def drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def forward_logs(events: Events, names: tuple[str, ...]) -> None:
    """Send the records of these loggers (asyncio's, in a hybrid worker) to
    the caller too. Imports logging, so only where threads run anyway."""
    import logging

    class EventHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                events.log(record.levelno, self.format(record))
            except Exception:  # a record that cannot be formatted: nothing to tell
                pass

    for name in names:
        logger = logging.getLogger(name)
        logger.handlers[:] = [EventHandler()]
        logger.propagate = False


class _Session:
    """A serving child's state, changed by its signal handlers."""

    def __init__(self, silent_for: Callable[[], float]) -> None:
        self.stopping = False
        self.closed_by: str | None = None  # why the server closed the connection
        self.conn: socket.socket | None = None
        self.silent_for = silent_for

    def why_closed(self) -> str | None:
        return self.closed_by

    def stop(self, *_: object) -> None:  # SIGTERM: finish the session, accept no more
        self.stopping = True

    def close_now(self, *_: object) -> None:  # SIGINT: close the connection now
        self.stopping = True
        self.close("closed by server")

    def give_way(self, *_: object) -> None:  # SIGUSR1: a client waits; close if still idle
        if self.silent_for() >= IDLE_GIVES_WAY / 2:  # its client may have spoken since
            self.close(GAVE_WAY)

    def close(self, why: str) -> None:
        if self.conn is not None:
            self.closed_by = why
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Accepting:
    """prefork: ``workers`` children accept on the shared socket, each
    serving one connection at a time; they report busy / free on the
    master's state pipe. When none is free, clients wait in the backlog
    (``_backlog``) and the master says "busy" to who waited too long."""

    full_title = True
    one_shot = False
    child_name = "concur-prefork"

    def __init__(self, master: Master) -> None:
        self.master = master
        slots = master.max_connections if self.one_shot else master.workers
        master.backlog = self.backlog = Backlog(master.listener, master.queue_timeout, slots)

    def start(self) -> None:
        self.replenish()

    def replenish(self) -> None:
        master = self.master
        while len(master.busy) < master.workers:
            self.fork_child()

    def gone(self, pid: int, code: int) -> None:
        self.backlog.release(pid)

    def heard(self, pid: int, kind: int) -> None:
        if kind == SERVING:
            self.backlog.taken()
        elif kind == FREE:
            self.backlog.done(pid)
        elif kind == ENDED:  # its slot is free for the next child now
            self.backlog.release(pid)

    def open_sessions(self) -> int:
        return sum(self.master.busy.values())

    def fork_child(self) -> None:
        master, slot = self.master, self.backlog.claim()
        pid = master.fork(lambda: self.serve(slot), self.child_name)
        self.backlog.hold(slot, pid)
        master.busy[pid] = False
        master.children[pid] = {"started": time.monotonic()}

    def serve(self, slot: int) -> None:
        """Accept on the shared socket and serve, until told to stop (or,
        one-shot, after one connection)."""
        master, me, backlog = self.master, os.getpid(), self.backlog
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        session = _Session(lambda: backlog.silent_for(slot))

        def say_free() -> None:  # a one-shot child is no longer counted, but does not take more
            os.write(master.state_w, state_record(me, ENDED if self.one_shot else FREE))

        signal.signal(signal.SIGTERM, session.stop)
        signal.signal(signal.SIGINT, session.close_now)
        signal.signal(signal.SIGUSR1, session.give_way)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        poller = select.poll()  # no selector object: fewer pages touched per child
        poller.register(master.listener.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while True:
            poller.poll()
            drain(wake_r)
            if session.stopping:  # set by a signal handler, which the wakeup fd reports
                return
            accepted = accept_one(master.listener, master.accept_errors)
            if isinstance(accepted, OSError):
                time.sleep(BACKOFF)
                continue
            if accepted is None:
                continue
            conn, address = accepted
            peer = peer_name(address)
            os.write(master.state_w, state_record(me, SERVING, peer))
            if self.one_shot:
                master.listener.close()
            session.conn, session.closed_by = conn, None
            drive(
                conn,
                peer,
                master.handler,
                master.idle_timeout,
                session.why_closed,
                say_free,
                lambda silent: backlog.mark(slot, silent),
            )
            session.conn = None
            if self.one_shot:
                return


class OneShot(Accepting):
    """process (the seed's design): a process per connection, forked ahead.
    ``workers`` spare children wait on the shared socket; each serves one
    connection and exits, and the master forks the next spare while it
    serves, so no client waits for a fork; at most ``max_connections``
    children in all."""

    # One-shot children get the kernel name only (what concur ps reads): the
    # full title rewrites the command line's pages, once per connection.
    full_title = False
    one_shot = True
    child_name = "concur-session"

    def replenish(self) -> None:
        master = self.master
        while master.idle_workers() < master.workers and len(master.busy) < master.max_connections:
            self.fork_child()


class Hybrid:
    """hybrid: ``workers`` children, each an event loop holding many
    connections with a thread pool for handlers that block. Each child
    writes its open-connection count in its own slot of a shared page, so
    together they keep to ``max_connections``; a child that exits is
    replaced in its slot."""

    full_title = True

    def __init__(self, master: Master) -> None:
        self.master = master
        self.slots: dict[int, int] = {}  # child pid -> its slot in counts
        self.counts = mmap.mmap(-1, 8 * max(master.workers, 1))

    def start(self) -> None:
        for slot in range(self.master.workers):
            self.fork_slot(slot)

    def replenish(self) -> None:
        pass  # a slot is re-forked when its child is reaped

    def heard(self, pid: int, kind: int) -> None:
        pass  # hybrid children report no serving state: they count in shared memory

    def gone(self, pid: int, code: int) -> None:
        slot = self.slots.pop(pid, None)
        if slot is None:
            return
        self.counts[8 * slot : 8 * slot + 8] = struct.pack("q", 0)
        if self.master.stopping_since is None:
            if code == 0:
                log.warning("hybrid worker %d exited; starting another", pid)
            self.fork_slot(slot)

    def fork_slot(self, slot: int) -> None:
        pid = self.master.fork(lambda: self.serve(slot), "concur-hybrid")
        self.slots[pid] = slot
        self.master.children[pid] = {"slot": slot, "started": time.monotonic()}

    def serve(self, slot: int) -> None:
        import asyncio

        forward_logs(self.master.events, ("asyncio",))
        asyncio.run(self._serve(slot))

    def open_sessions(self) -> int:
        counts, workers = self.counts, self.master.workers
        return sum(struct.unpack_from("q", counts, 8 * i)[0] for i in range(workers))

    async def _serve(self, slot: int) -> None:
        import asyncio

        from ._loop import LoopServer, Offload

        master, loop = self.master, asyncio.get_running_loop()
        open_here = 0

        def count(change: int) -> None:
            nonlocal open_here
            open_here += change
            self.counts[8 * slot : 8 * slot + 8] = struct.pack("q", open_here)

        def admit(_: object) -> bool:
            if self.open_sessions() >= master.max_connections:
                return False
            count(1)
            return True

        server = LoopServer(
            loop,
            master.handler,
            master.idle_timeout,
            admit,
            lambda _: count(-1),
            master.accept_errors,
            Offload(master.threads),
        )
        server.start(master.listener)
        stopped = asyncio.Event()

        def close_now() -> None:
            server.close_all()
            stopped.set()

        loop.add_signal_handler(signal.SIGTERM, stopped.set)  # finish the open sessions
        loop.add_signal_handler(signal.SIGINT, close_now)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # giving way is for one-connection children
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        await stopped.wait()
        await server.stop(grace=float("inf"))  # the master sends SIGINT when grace ends


MODELS: dict[str, type[Accepting] | type[Hybrid]] = {
    "process": OneShot,
    "prefork": Accepting,
    "hybrid": Hybrid,
}
