"""Concurrency models for the TCP server, behind one ``Server`` handle.

    thread   accept thread ──► one thread per connection: recv → session.feed → sendall
    async    one event-loop thread: asyncio streams, a task per connection

Both apply the same rules: at most ``max_connections`` sessions at once (the
next client gets a short "busy" line and a close, not a hang); a client
silent for ``idle_timeout`` seconds is closed; a session that raises ends
only its own connection, logged with its traceback; one log line per
connection (peer, duration, messages, how it ended). ``close(grace)`` stops
accepting, lets open sessions finish for ``grace`` seconds, then closes them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .protocol import Session, UppercaseSession

log = logging.getLogger("concur.server")

MODELS = ("thread", "async")
BUSY = b"busy: too many connections; try again later\n"
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_IDLE_TIMEOUT = 300.0
READ_SIZE = 64 * 1024


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.create_server((host, port), reuse_port=False, backlog=1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


class Server:
    """A running server; ``port`` is the bound port (useful with ``port=0``)."""

    def __init__(
        self,
        handler: Callable[[str], Session],
        host: str,
        port: int,
        model: str,
        max_connections: int,
        idle_timeout: float,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be > 0 seconds")
        self.handler = handler
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
        self._grace = 5.0
        self._ready = threading.Event()
        runner = self._run_threads if model == "thread" else self._run_async
        main = threading.Thread(target=runner, name=f"concur-server-{model}", daemon=True)
        self._threads.append(main)
        main.start()
        self._ready.wait(10)

    # -- bookkeeping shared by the models --------------------------------------

    def _admit(self, conn: Any) -> bool:
        with self._lock:
            if len(self._open) >= self.max_connections:
                return False
            self._open.add(conn)
            return True

    def _release(self, conn: Any) -> None:
        with self._lock:
            self._open.discard(conn)

    def _logline(self, peer: str, started: float, session: Session | None, how: str) -> None:
        messages = session.messages if session is not None else 0
        log.info(
            "connection peer=%s duration=%.3fs messages=%d ended=%s",
            peer,
            time.monotonic() - started,
            messages,
            how,
        )

    # -- thread model --------------------------------------------------------

    def _run_threads(self) -> None:
        self._sock.settimeout(0.1)  # so the accept loop notices close()
        self._ready.set()
        while not self._stopping.is_set():
            try:
                conn, address = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                log.warning("accept failed (%s); backing off", exc)
                time.sleep(0.1)
                continue
            if not self._admit(conn):
                _refuse(conn)
                continue
            worker = threading.Thread(
                target=self._serve_thread,
                args=(conn, f"{address[0]}:{address[1]}"),
                name="concur-server-connection",
                daemon=True,
            )
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(worker)
            worker.start()

    def _serve_thread(self, conn: socket.socket, peer: str) -> None:
        started, session, how = time.monotonic(), None, "client closed"
        conn.settimeout(self.idle_timeout)
        try:
            session = self.handler(peer)
            while True:
                data = conn.recv(READ_SIZE)
                if not data:
                    if self._stopping.is_set():
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
            how = "closed by server" if self._stopping.is_set() else f"socket error: {exc}"
        except Exception:
            how = "handler failed"
            log.exception("the session for %s failed; closing its connection", peer)
        finally:
            if session is not None:
                session.end()
            self._release(conn)
            conn.close()
            self._logline(peer, started, session, how)

    # -- async model ---------------------------------------------------------

    def _run_async(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._async_main())
        finally:
            loop.close()

    async def _async_main(self) -> None:
        self._sock.setblocking(False)
        self._async_stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        server = await asyncio.start_server(self._serve_async, sock=self._sock, limit=READ_SIZE)
        self._ready.set()
        await self._async_stop.wait()
        server.close()  # stop accepting; open sessions go on for the grace period
        deadline = time.monotonic() + self._grace
        while self._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve_async(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        address = writer.get_extra_info("peername") or ("?", 0)
        peer = f"{address[0]}:{address[1]}"
        if not self._admit(writer):
            writer.write(BUSY)
            await _drain_and_close(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        started, session, how = time.monotonic(), None, "client closed"
        try:
            session = self.handler(peer)
            while True:
                data = await asyncio.wait_for(reader.read(READ_SIZE), self.idle_timeout)
                if not data:
                    break
                reply = session.feed(data)
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
                session.end()
            self._release(writer)
            self._tasks.discard(task)
            await _drain_and_close(writer)
            self._logline(peer, started, session, how)

    # -- stopping --------------------------------------------------------------

    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let sessions finish for ``grace`` s, then close them."""
        if self._stopping.is_set():
            return
        self._grace = grace
        self._stopping.set()
        if self.model == "async":  # the event loop applies the grace itself
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._async_stop.set)
            self._threads[0].join(timeout=grace + 5)
            self._sock.close()
            return
        self._sock.close()
        deadline = time.monotonic() + grace
        while self.open_connections() and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            left = list(self._open)
        for conn in left:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self._threads):
            thread.join(timeout=5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refuse(conn: socket.socket) -> None:
    try:
        conn.sendall(BUSY)
    except OSError:
        pass
    conn.close()


async def _drain_and_close(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    except (OSError, asyncio.CancelledError):
        pass


def start(
    handler: Callable[[str], Session] | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    model: str = "thread",
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> Server:
    """Start serving in the background; return the running Server."""
    return Server(handler or UppercaseSession, host, port, model, max_connections, idle_timeout)


def serve(grace: float = 5.0, **options: Any) -> int:
    """Serve until SIGINT or SIGTERM, then close gracefully; returns 0."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with start(**options) as server:
            log.info("serving on %s:%d (model %s)", server.host, server.port, server.model)
            while not stop.wait(0.5):
                pass
            server.close(grace)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
