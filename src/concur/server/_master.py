"""The master process of the process, prefork and hybrid models.

The caller (``concur serve`` or ``start()``) runs ``python -m
concur.server._master EVENTS_FD`` in a new session and writes the set-up to
its stdin. The master is single-threaded, so forking from it is safe; it
binds the listening socket, forks the children that serve connections and
reaps every one of them the moment SIGCHLD says it ended:

    process   a process per connection (the seed's design), forked ahead
    prefork   N children accept on the shared socket, one connection each
    hybrid    N children, each an event loop holding many connections

The loop here is the same for all three; what differs is one small object
per model (``_children``): which children to keep, what they run, and
whether the master watches the clients waiting for a free child (process,
prefork: ``_backlog``), saying "busy" to those that waited too long.

Lifelines. The caller keeps the master's stdin open: end of file means the
caller is gone (even by SIGKILL), and the master kills its children and
exits. Each child asks the kernel for SIGKILL when the master dies
(``PR_SET_PDEATHSIG``), so nothing outlives the server.

Stopping (a ``stop GRACE`` line on stdin): stop accepting; SIGTERM tells
prefork and hybrid children to stop accepting and finish their sessions;
after GRACE seconds SIGINT makes every child close its connections (logged
as "closed by server"); KILL_AFTER_S seconds later SIGKILL; the master exits when its
last child is reaped. A second ``stop`` can only shorten the grace; a
``count`` line is answered with the number of open connections.

Children log through a datagram socket to the caller, which re-emits each
record on the ``concur.server`` logger: one log line per connection, and
tracebacks, appear where the user configured logging. No server process
ever waits on that socket (``_children.Events``): when the caller does not
read, records are dropped, counted on the state pipe, and the master tells
the caller how many once it reads again.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from .._proc import load_libc, set_pdeathsig, set_title
from ._backlog import POLL, Backlog
from ._children import (
    ACCEPT_FAILED,
    ENDED,
    LOG_DROPPED,
    MODELS,
    SERVING,
    STOP_SIGNALS,
    AcceptRelay,
    Events,
    describe_exit,
    drain,
    state_record,
    state_records,
    tell,
)
from ._drive import BACKOFF, AcceptErrors, log
from .protocol import Session

# Seconds from telling the children to close their sessions now (SIGINT) to
# killing those still there: enough for one the host keeps waiting to run.
KILL_AFTER_S = 2.0


def _read_setup() -> dict[str, Any]:
    stdin = sys.stdin.buffer
    sys.path[:] = json.loads(stdin.readline())
    size = int(stdin.readline())
    # cloudpickle wrote it; plain pickle reads it, importing cloudpickle only
    # if the handler was pickled by value (a lambda, a class from __main__)
    import pickle

    setup: dict[str, Any] = pickle.loads(stdin.read(size))
    return setup


class Master:
    """The loop every model shares: listen, say "busy", stop, reap.

    What differs by model is ``self.kind`` (see ``_children``).
    """

    def __init__(self, setup: dict[str, Any], events: Events) -> None:
        self.model: str = setup["model"]
        self.handler: Callable[[str], Session] = setup["handler"]
        self.max_connections: int = setup["max_connections"]
        self.idle_timeout: float = setup["idle_timeout"]
        self.workers: int = setup["workers"]
        self.threads: int = setup["threads"]
        self.events = events
        self.listener = socket.create_server(
            (setup["host"], setup["port"]), backlog=setup["backlog"]
        )
        self.listener.setblocking(False)
        self.pid = os.getpid()
        self.children: dict[int, dict[str, Any]] = {}  # pid -> facts
        self.stopping_since: float | None = None
        self.grace = 5.0
        self.signalled: set[int] = set()  # told to close their sessions now
        self.killed: set[int] = set()  # still there KILL_AFTER_S later: SIGKILL
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.state_r, self.state_w = os.pipe()  # process/prefork: busy / free reports
        self.devnull = os.open(os.devnull, os.O_RDONLY)  # each child's stdin
        os.set_blocking(self.state_r, False)
        self.busy: dict[int, bool] = {}  # process/prefork child pid -> serving
        self.listening = False
        self.backoff_until = 0.0
        self.terminated = False
        self.partial = b""  # the start of a command line from the caller
        self.accept_errors: AcceptErrors | AcceptRelay = AcceptErrors()
        self.queue_timeout: float = setup["queue_timeout"]
        self.backlog: Backlog | None = None  # process, prefork: the clients waiting
        self.kind = MODELS[self.model](self)

    def on_sigterm(self, *_: object) -> None:
        self.terminated = True  # acted on by the loop, which the wakeup fd wakes

    # -- the loop -------------------------------------------------------------

    def run(self) -> int:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self.on_sigterm)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ)
        self.sel.register(self.state_r, selectors.EVENT_READ)
        self.kind.start()
        self.update_listening()
        self.events.send({"t": "ready", "port": self.listener.getsockname()[1]})
        while True:
            self.reap()
            self.events.report_drops()
            if self.terminated:
                self.terminated = False
                self.stop(5.0)
            if self.stopping_since is not None:
                if not self.children:
                    return 0
                self.escalate()
            arrived = False
            for key, _ in self.sel.select(timeout=self.tick()):
                if key.fd == self.wake_r:
                    drain(self.wake_r)
                elif key.fd == sys.stdin.fileno():
                    self.command()
                elif key.fd == self.state_r:
                    self.read_states()
                    self.replenish()
                else:
                    arrived = True  # the listener: a client found no child free
            if arrived or (self.backlog is not None and self.backlog.waiting()):
                self.watch_backlog()
            self.update_listening()

    def tick(self) -> float | None:
        if self.stopping_since is not None:
            return 0.05
        if self.backoff_until:
            return BACKOFF
        waits = [self.accept_errors.tick()]
        if self.backlog is not None and self.backlog.waiting():
            waits.append(POLL)
        if self.events.dropped:
            waits.append(1.0)  # to report them, once the caller reads again
        return min((wait for wait in waits if wait is not None), default=None)

    def command(self) -> None:
        """The caller's lines: ``stop GRACE`` (again: a shorter grace), ``count``."""
        data = os.read(sys.stdin.fileno(), 4096)
        if not data:  # the caller is gone, however it died
            self.sel.unregister(sys.stdin.fileno())
            for pid in self.children:
                _kill(pid, signal.SIGKILL)
            self.stop(0.0)
            return
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            words = line.split()
            if words[:1] == [b"stop"]:
                self.stop(float(words[1]) if len(words) > 1 else 5.0)
            elif words[:1] == [b"count"]:
                self.events.send({"t": "open", "n": self.kind.open_sessions()})

    def stop(self, grace: float) -> None:
        if self.stopping_since is not None:  # a second stop can only hurry the first
            self.grace = min(self.grace, time.monotonic() - self.stopping_since + grace)
            return
        self.stopping_since = time.monotonic()
        self.grace = grace
        if self.listening:
            self.sel.unregister(self.listener)
            self.listening = False
        self.listener.close()
        for pid in self.children:
            _kill(pid, signal.SIGTERM)  # prefork/hybrid: stop accepting, finish

    def escalate(self) -> None:
        assert self.stopping_since is not None
        late = time.monotonic() - self.stopping_since - self.grace
        for pid in list(self.children):
            if late >= KILL_AFTER_S:
                self.killed.add(pid)
                _kill(pid, signal.SIGKILL)
            elif late >= 0 and pid not in self.signalled:
                self.signalled.add(pid)
                _kill(pid, signal.SIGINT)  # close the sessions now

    # -- the busy reply and keeping children ready -----------------------------

    def update_listening(self) -> None:
        # the master listens for the first client that finds no child free;
        # while clients wait, it looks at the queue every POLL seconds instead
        want = (
            self.stopping_since is None
            and time.monotonic() >= self.backoff_until
            and self.backlog is not None
            and not self.backlog.waiting()
            and not self.idle_workers()
        )
        if self.backoff_until and time.monotonic() >= self.backoff_until:
            self.backoff_until = 0.0
        if want and not self.listening:
            self.sel.register(self.listener, selectors.EVENT_READ)
        elif self.listening and not want:
            self.sel.unregister(self.listener)
        self.listening = want

    def idle_workers(self) -> int:
        return sum(1 for serving in self.busy.values() if not serving)

    def watch_backlog(self) -> None:
        """Clients wait for a free child (``_backlog``): count them, say busy
        to who waited too long, ask an idle connection to give way."""
        if self.backlog is None or self.stopping_since is not None:
            return  # (hybrid children say busy themselves)
        error = self.backlog.watch(self.idle_workers())
        if error is not None:
            self.accept_errors.failed(error.errno or 0)
            self.backoff_until = time.monotonic() + BACKOFF  # the loop stops looking a while

    def replenish(self) -> None:
        if self.stopping_since is None:
            self.kind.replenish()

    def read_states(self) -> None:
        for pid, kind, text in state_records(drain(self.state_r)):
            if kind == LOG_DROPPED:
                self.events.dropped += 1
            elif kind == ACCEPT_FAILED:
                self.accept_errors.failed(int(text))
            elif kind == ENDED:  # neither serving nor free: about to exit
                self.busy.pop(pid, None)
            elif pid in self.busy:
                self.busy[pid] = kind == SERVING
                if kind == SERVING:
                    self.children[pid].update(peer=text, since=time.monotonic())
            self.kind.heard(pid, kind)

    # -- children -------------------------------------------------------------

    def fork(self, body: Callable[[], None], name: str) -> int:
        # A stop signal that reached the child before it set its own handlers
        # would run the master's and be lost: hold them until the child is ready.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            return pid
        code = 1
        try:
            self.after_fork(name)
            body()
            code = 0
        except BaseException:
            log.exception("a %s process failed", name)
        finally:
            os._exit(code)

    def after_fork(self, name: str) -> None:
        """A new child lets go of the master's wake-ups, pipes and stdin.

        Kept short: every page it touches is one the kernel copies, once per
        connection in the process model. The stop signals stay blocked (and
        the master's handlers in place) until the child sets its own.
        """
        set_pdeathsig()  # the master is single-threaded: this follows the master
        if os.getppid() != self.pid:
            os._exit(0)
        drop = state_record(os.getpid(), LOG_DROPPED)
        self.events.on_drop = lambda: tell(self.state_w, drop)  # the master counts
        self.accept_errors = AcceptRelay(self.state_w)  # and tells, for the whole server
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in (self.sel.fileno(), self.wake_r, self.wake_w, self.state_r):
            os.close(fd)
        os.dup2(self.devnull, 0)  # the caller's lifeline stays the master's alone
        os.close(self.devnull)
        title = f"{name} (concur server {self.model}, master {self.pid})"
        set_title(title, name, self.kind.full_title)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            facts = self.children.pop(pid, {"started": time.monotonic()})
            code = os.waitstatus_to_exitcode(status)
            serving = self.busy.pop(pid, False)
            if serving and code != 0:  # its connection's own log line died with it
                _lost_connection(facts, code, pid in self.killed)
            elif code != 0 and self.stopping_since is None:
                log.warning(
                    "%s worker %d %s; starting another", self.model, pid, describe_exit(code)
                )
            self.kind.gone(pid, code)
            self.replenish()


def _lost_connection(facts: dict[str, Any], code: int, killed: bool) -> None:
    """The log line of a connection whose process ended before writing it;
    ``killed``: the master sent it SIGKILL at a stop."""
    if killed and code == -signal.SIGKILL:
        how = f"killed by the server (not closed {KILL_AFTER_S:g} s after told to)"
    else:
        how = describe_exit(code)
    log.warning(
        "connection peer=%s duration=%.3fs messages=? ended=%s",
        facts.get("peer", "?"),
        time.monotonic() - facts.get("since", facts["started"]),
        how,
    )


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def main() -> int:
    load_libc()  # loaded once here, not in every child
    events = Events(socket.socket(fileno=int(sys.argv[1])))
    try:
        setup = _read_setup()
        log.to_events(events.log, setup["log_level"])
        set_title(f"concur-server ({setup['model']} model)", "concur-server")
        master = Master(setup, events)
    except Exception as exc:
        errno_ = exc.errno if isinstance(exc, OSError) else None
        events.send({"t": "error", "errno": errno_, "msg": f"{type(exc).__name__}: {exc}"})
        return 1
    return master.run()


if __name__ == "__main__":
    sys.exit(main())
