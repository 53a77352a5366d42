"""Concurrency models for the TCP server, behind one ``Server`` handle.

    thread   accept thread ──► one thread per connection
    async    one event loop: a protocol per connection; handlers that block
             are moved to a small thread pool once timed slow (the default)
    process  a process per connection, forked ahead: spares wait on the socket
    prefork  N processes accept on one socket, one connection each at a time
    hybrid   N processes, each an event loop plus M threads for handlers

``thread`` and ``async`` run inside the caller's process. The three process
models run under a master process (``_master.py``) that reaps every child at
once and takes them all down with it, even when the caller is SIGKILLed.

Every model applies the same rules: at most ``max_connections`` sessions at
once (the next client gets a short "busy" line and a close, not a hang); a
client silent for ``idle_timeout`` seconds is closed; a session that raises,
or a process that crashes, ends only its own connection, logged with its
traceback; one log line per connection (peer, duration, messages, how it
ended); ``close(grace)`` stops accepting, lets open sessions finish for
``grace`` seconds, then closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ._drive import BACKOFF, AcceptErrors, drive, peer_name, refuse
from ._loop import LoopServer, Offload
from .protocol import MaxMessage, Session, UppercaseSession

log = logging.getLogger("concur.server")

MODELS = ("thread", "async", "process", "prefork", "hybrid")
DEFAULT_MODEL = "async"
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_QUEUE_TIMEOUT = 5.0
DEFAULT_HYBRID_THREADS = 8
BACKLOG = 1024
EVENT_SIZE = 1 << 17  # more than the largest event the master's side sends


def _listen(host: str, port: int) -> socket.socket:
    return socket.create_server((host, port), backlog=BACKLOG)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard one; return (before, after).

    Every connection is a file descriptor: the common soft limit of 1,024
    would cap a server far below what the machine can hold.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


class Server:
    """A running server: ``host``, ``port`` (the bound one, useful with
    ``port=0``), ``model``; ``close(grace)`` stops it. ``failure`` is None
    while it serves; it says why if the server stopped on its own (the
    process models' master process died)."""

    host: str
    port: int
    model: str
    failure: str | None = None

    def close(self, grace: float = 5.0) -> None:
        raise NotImplementedError

    def open_connections(self) -> int | None:
        """How many connections are being served now (None: not known)."""
        raise NotImplementedError

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalServer(Server):
    """The thread and async models, in the caller's process."""

    def __init__(
        self,
        handler: Callable[[str], Session],
        host: str,
        port: int,
        model: str,
        max_connections: int,
        idle_timeout: float,
        threads: int = 8,
    ) -> None:
        self.handler = handler
        self.threads = threads
        self.model = model
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._sock = _listen(host, port)
        self.host, self.port = self._sock.getsockname()[:2]
        self._lock = threading.Lock()
        self._open: set[Any] = set()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_server: LoopServer | None = None
        self._deadline: float | None = None  # set by close: when open sessions are closed
        self._closed = threading.Event()
        self._hurried = False
        self._ready = threading.Event()
        self._accept_errors = AcceptErrors()
        self._start()

    def _start(self) -> None:
        runner = self._run_threads if self.model == "thread" else self._run_async
        main = threading.Thread(target=runner, name=f"concur-server-{self.model}", daemon=True)
        self._threads.append(main)
        main.start()
        self._ready.wait(10)

    def _admit(self, conn: Any) -> bool:
        with self._lock:
            if len(self._open) >= self.max_connections:
                return False
            self._open.add(conn)
            return True

    def _release(self, conn: Any) -> None:
        with self._lock:
            self._open.discard(conn)

    # -- thread model --------------------------------------------------------

    def _run_threads(self) -> None:
        self._sock.settimeout(0.1)  # so the accept loop notices close()
        self._ready.set()
        while not self._stopping.is_set():
            try:
                conn, address = self._sock.accept()
            except TimeoutError:
                self._accept_errors.tick()
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                self._accept_errors.failed(exc.errno or 0)
                time.sleep(BACKOFF)
                continue
            self._accept_errors.tick()
            if not self._admit(conn):
                refuse(conn)
                continue
            worker = threading.Thread(
                target=self._serve_thread,
                args=(conn, peer_name(address)),
                name="concur-server-connection",
                daemon=True,
            )
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(worker)
            worker.start()

    def _serve_thread(self, conn: socket.socket, peer: str) -> None:
        try:
            drive(conn, peer, self.handler, self.idle_timeout, self._closed_by)
        finally:
            self._release(conn)

    def _closed_by(self) -> str | None:
        return "closed by server" if self._stopping.is_set() else None

    # -- async model ---------------------------------------------------------

    def _run_async(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._async_main())
        finally:
            loop.close()

    async def _async_main(self) -> None:
        self._sock.setblocking(False)
        stop: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._async_stop = stop
        loop = asyncio.get_running_loop()
        self._loop = loop
        offload = Offload(self.threads)  # a handler that blocks must not stall the loop
        server = LoopServer(
            loop,
            self.handler,
            self.idle_timeout,
            self._admit,
            self._release,
            self._accept_errors,
            offload,
        )
        server.start(self._sock)
        self._loop_server = server
        self._ready.set()
        await server.stop(await stop, join=5.0)

    # -- stopping --------------------------------------------------------------

    def open_connections(self) -> int | None:
        with self._lock:
            return len(self._open)

    def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let open sessions finish for ``grace`` s, close
        the rest. A second call (another thread, while the first waits) can
        only shorten the grace; it returns when the server has stopped."""
        with self._lock:
            deadline = time.monotonic() + grace
            first = self._deadline is None
            self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
        if not first:
            self._hurried = True
            if self._loop_server is not None:
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):  # the loop has already ended
                    self._loop.call_soon_threadsafe(self._loop_server.hurry)
            self._closed.wait()  # the first close bounds it
            return
        self._stopping.set()
        if self.model == "async":  # the event loop applies the grace itself
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._async_stop.set_result, grace)
            self._threads[0].join(timeout=grace + 5)
            self._sock.close()
        else:
            self._close_threads()
        self._closed.set()

    def _close_threads(self) -> None:
        self._sock.close()
        while self.open_connections() and time.monotonic() < (self._deadline or 0):
            time.sleep(0.01)
        with self._lock:
            left = list(self._open)
        for conn in left:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self._threads):  # a handler that never returns: not waited on
            allowance = 0.5 if self._hurried else 5.0
            thread.join(max((self._deadline or 0) + allowance - time.monotonic(), 0))


class MasterServer(Server):
    """The process, prefork and hybrid models: a master process and its children.

    The master is started with ``subprocess`` (safe from a threaded caller)
    in a session of its own, so a Ctrl-C in the terminal reaches only the
    caller, which then closes the server gracefully. Its stdin is the
    lifeline and the command channel; its children's log records come back
    as datagrams and are re-emitted on the ``concur.server`` logger here.
    """

    def __init__(
        self,
        handler: Callable[[str], Session],
        host: str,
        port: int,
        model: str,
        max_connections: int,
        idle_timeout: float,
        workers: int,
        threads: int,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
    ) -> None:
        import cloudpickle

        from ..errors import SerializationError

        self.model = model
        self.host = host
        self.port = 0
        self.workers = workers
        self._error: OSError | None = None
        self._ready = threading.Event()
        self._closing = False
        self._closed = threading.Event()
        self._kill_at = float("inf")  # closing: when the master is killed if still there
        self._lock = threading.Lock()  # one writer on the master's stdin at a time
        self._count = threading.Event()
        self._open: int | None = None
        setup = {
            "handler": handler,
            "host": host,
            "port": port,
            "model": model,
            "max_connections": max_connections,
            "idle_timeout": idle_timeout,
            "workers": workers,
            "threads": threads,
            "queue_timeout": queue_timeout,
            "backlog": BACKLOG,
            "log_level": log.getEffectiveLevel(),  # read once: children send only what shows
        }
        try:
            blob = cloudpickle.dumps(setup)
        except Exception as exc:
            raise SerializationError(
                f"the {model} model runs handlers in other processes, so the handler "
                f"must be picklable: {exc}"
            ) from exc
        self._launch(blob)
        self._reader = threading.Thread(
            target=self._read_events, name="concur-server-events", daemon=True
        )
        self._reader.start()
        if not self._ready.wait(60) or self._error is not None:
            error = self._error or OSError("the server's master process did not start")
            self._shutdown(0.0)
            raise error

    @property
    def pid(self) -> int:
        """The master process's pid."""
        return self._master.pid

    def _launch(self, blob: bytes) -> None:
        """Start the master; send it sys.path and the pickled set-up on stdin."""
        self._events, events_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with events_w:
            self._master = subprocess.Popen(
                [sys.executable, "-m", "concur.server._master", str(events_w.fileno())],
                stdin=subprocess.PIPE,
                pass_fds=(events_w.fileno(),),
                start_new_session=True,
            )
        assert self._master.stdin is not None
        self._stdin = self._master.stdin
        self._stdin.write(json.dumps(sys.path).encode() + b"\n")
        self._stdin.write(b"%d\n" % len(blob) + blob)
        self._stdin.flush()

    def _read_events(self) -> None:
        self._events.settimeout(0.1)
        while True:
            try:
                data = self._events.recv(EVENT_SIZE)
            except TimeoutError:
                if self._master.poll() is not None:
                    break
                continue
            self._handle(data)
        self._events.setblocking(False)
        while True:  # what the last children said before the master reaped them
            try:
                self._handle(self._events.recv(EVENT_SIZE))
            except BlockingIOError:
                break
        if not self._ready.is_set():
            self._error = self._error or OSError("the server's master process exited")
            self._ready.set()
        elif not self._closing:
            self._master_died()

    def _master_died(self) -> None:
        from ._children import describe_exit

        self.failure = (
            f"the server's master process (pid {self._master.pid}) ended on its own: "
            f"{describe_exit(self._master.returncode)}; the {self.model} workers ended "
            f"with it, and {self.host}:{self.port} no longer accepts connections"
        )
        log.error("%s", self.failure)

    def _handle(self, data: bytes) -> None:
        # This thread must go on reading whatever arrives: the server's
        # processes never wait for it, so what it misses is lost.
        try:
            event = json.loads(data)
            kind = event.get("t")
            level = int(event.get("level", logging.WARNING))
        except (ValueError, AttributeError, TypeError):
            log.warning("a malformed event from the server's processes: %r", data[:200])
            return
        if kind == "log":
            log.log(level, "%s", event.get("msg"))
        elif kind == "open":
            self._open = int(event["n"])
            self._count.set()
        elif kind == "ready":
            self.port = int(event["port"])
            self._ready.set()
        elif kind == "error":
            self._error = OSError(event.get("errno") or 0, event["msg"])
            self._ready.set()

    def close(self, grace: float = 5.0) -> None:
        """As ``LocalServer.close``: a second call can only shorten the grace."""
        self._shutdown(grace)

    def open_connections(self) -> int | None:
        """The connections the workers serve now; None if the master does
        not answer within a second."""
        with self._lock:
            self._count.clear()
            if not self._tell(b"count\n") or not self._count.wait(1.0):
                return None
            return self._open

    def _tell(self, line: bytes) -> bool:
        try:
            self._stdin.write(line)
            self._stdin.flush()
        except (OSError, ValueError):  # the master is gone; stdin closed
            return False
        return True

    def _shutdown(self, grace: float) -> None:
        with self._lock:
            first = not self._closing
            self._closing = True
            self._kill_at = min(self._kill_at, time.monotonic() + grace + 5)
            if self._master.poll() is None:
                self._tell(b"stop %f\n" % grace)  # again: the master shortens its grace
        if not first:
            self._closed.wait()  # the first call bounds it
            return
        while self._master.poll() is None and time.monotonic() < self._kill_at:
            time.sleep(0.02)
        if self._master.poll() is None:
            os.killpg(self._master.pid, signal.SIGKILL)
            self._master.wait()
        with self._lock:
            try:
                self._stdin.close()
            except OSError:
                pass
        self._reader.join(5)
        self._events.close()
        self._closed.set()


def start(
    handler: Callable[[str], Session] | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    model: str = DEFAULT_MODEL,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_message: int | None = None,
    workers: int | None = None,
    threads: int = DEFAULT_HYBRID_THREADS,
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
) -> Server:
    """Start serving in the background; return the running Server.

    ``workers`` is the number of processes for ``prefork`` (default 2 per
    core, plus one: each serves one connection at a time), ``hybrid``
    (default one per core) and ``process`` (the spare processes kept ready
    for the next clients; default one per core). ``threads`` is the pool an
    event loop (async, hybrid) moves a handler to once a call of it is slow.
    ``max_message`` caps a line for TextSession handlers. ``queue_timeout``
    (process, prefork) is how long a client may wait for a free process
    before the busy reply; meanwhile a connection silent for a second or
    more gives way to it.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
    if max_connections < 1:
        raise ValueError("max_connections must be >= 1")
    if idle_timeout <= 0:
        raise ValueError("idle_timeout must be > 0 seconds")
    if workers is not None and workers < 1:
        raise ValueError("workers must be >= 1")
    if threads < 1:
        raise ValueError("threads must be >= 1")
    if not queue_timeout >= 0:
        raise ValueError("queue_timeout must be >= 0 seconds")
    session: Callable[[str], Session] = handler or UppercaseSession
    if max_message is not None:
        if max_message < 1:
            raise ValueError("max_message must be >= 1 character")
        session = MaxMessage(session, max_message)
    raise_open_files_limit()
    if model in ("thread", "async"):
        return LocalServer(session, host, port, model, max_connections, idle_timeout, threads)
    cores = os.cpu_count() or 1
    if workers is None:
        workers = 2 * cores + 1 if model == "prefork" else cores
    if model == "prefork":  # each process serves one connection at a time
        workers = min(workers, max_connections)
    return MasterServer(
        session, host, port, model, max_connections, idle_timeout, workers, threads, queue_timeout
    )


def serve(grace: float = 5.0, **options: Any) -> int:
    """Serve until SIGINT or SIGTERM, then close gracefully; returns 0.

    The first signal stops accepting and logs what the close waits for; a
    second one closes the open sessions at once. Returns 1 at once if the
    server stops on its own (a process model's master died, which ends its
    workers too): exiting, rather than starting a new master, lets a
    service manager see it and restart."""
    stop, hurry = threading.Event(), threading.Event()

    def on_signal(*_: object) -> None:
        (hurry if stop.is_set() else stop).set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with start(**options) as server:
            log.info("serving on %s:%d (model %s)", server.host, server.port, server.model)
            while not stop.wait(0.2):
                if server.failure is not None:
                    return 1
            _stop(server, grace, hurry)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _stop(server: Server, grace: float, hurry: threading.Event) -> None:
    """Close ``server`` on a thread, so that this one (the main thread, which
    runs the signal handlers) can turn a second signal into a close now."""
    log.info("stopping: %s", _waiting_for(server.open_connections(), grace))
    closer = threading.Thread(
        target=server.close, args=(grace,), name="concur-server-close", daemon=True
    )
    closer.start()
    while closer.is_alive():
        if hurry.wait(0.05):
            log.info("stopping now: closing the open sessions")
            server.close(0.0)
            break
    closer.join()
    log.info("stopped")


def _waiting_for(sessions: int | None, grace: float) -> str:
    if sessions == 0:
        return "no open sessions"
    what = "the open sessions" if sessions is None else f"{sessions} session{'s' * (sessions > 1)}"
    return f"waiting up to {grace:g} s for {what}; Ctrl-C again to stop now"
