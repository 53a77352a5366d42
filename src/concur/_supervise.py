"""Keeping child processes tied to their parent.

Parent side
    One *lifeline* pipe per process. The parent keeps the write end and never
    writes to it; every child concur starts gets a copy of the read end. When
    the parent dies for any reason (SIGKILL included) the kernel closes the
    write end and the children read EOF. ``os.register_at_fork`` closes the
    write end in every forked child, so no child can keep a sibling's
    lifeline open.

Child side (``child_setup``, first thing in a worker)
    * on Linux the kernel itself SIGKILLs the child (and, for a pool worker,
      its process group) the moment the lifeline reads EOF: the pipe is set
      to signal-driven I/O with SIGKILL as the signal (``_kill_on_eof``), so
      no code of the child has to run, and a C call holding the GIL cannot
      delay it;
    * a daemon thread blocks reading the lifeline and ends the process the
      moment it reads EOF, even while the main thread runs a long task (the
      portable path);
    * on Linux, ``PR_SET_PDEATHSIG`` asks the kernel for SIGKILL when the
      parent *thread* that started the child exits. concur starts workers
      from the pool's supervisor thread, which lives as long as the pool, so
      the signal never fires early; it covers the case where the lifeline
      thread cannot run (a C call holding the GIL);
    * SIGINT is ignored: Ctrl-C reaches the whole foreground process group,
      and it is the parent's job to stop the workers, without a traceback
      from each of them. Workers are started from a thread that blocks
      SIGINT, so a press while a child still boots (before it can ignore the
      signal) stays pending and is then dropped, instead of printing a
      traceback from the child or the fork server;
    * a pool worker leads a process group of its own, so whatever a task
      starts (``subprocess``, ``os.fork``) can be stopped with it: the parent
      signals the group when it stops or reaps the worker, and a worker
      that finds its parent gone takes its group down with it;
    * a worker forked from the fork server drops its copy of the server's
      "alive" pipe, which the server watches to know that concur's process
      lives: a worker holding it would keep the server, and so itself
      (through ``PR_SET_PDEATHSIG``), alive after the parent's death;
    * the child's ``sys.stderr`` writes whole lines: Python writes each
      ``print`` to a non-terminal stderr as two calls (text, then newline),
      so a line of the parent's (a forwarded log record) or of a sibling's
      could land in between. Line buffering, what a terminal gets, makes
      each line one write; a partial line is flushed at exit, at
      ``flush()``, and at a carriage return (progress bars).

Starting without the main module
    Under spawn and forkserver, multiprocessing re-runs the parent's main
    module in each child, so that functions pickled by reference resolve.
    concur sends ``__main__``'s functions by value instead, so its workers
    skip that: ``starting_without_main()`` drops the main module from the
    preparation data of the processes concur starts. A script needs no main
    guard for concur's sake, and a program read from stdin (no file to
    re-run) can use processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import process as mp_process
from multiprocessing import spawn as mp_spawn
from typing import Any

from ._proc import load_libc, set_pdeathsig, set_title, title_setter
from .errors import MainGuardMissing

__all__ = [
    "check_not_bootstrapping",
    "child_setup",
    "kill_group",
    "lifeline_fd",
    "main_guard_error",
    "starting_without_main",
]

# Exit status of a worker that left because its parent is gone.
ORPHAN_EXIT = 75
# Exit status of a child that found its main module starting processes.
MAIN_GUARD_EXIT = 78

_lock = threading.Lock()
_lifeline: tuple[int, int] | None = None  # (read fd, write fd), in the owning process
_owner_pid: int | None = None


def lifeline_fd() -> int:
    """The read end of this process's lifeline, created on first use."""
    global _lifeline, _owner_pid
    with _lock:
        if _lifeline is None or _owner_pid != os.getpid():
            _lifeline = os.pipe()
            _owner_pid = os.getpid()
        return _lifeline[0]


def _forget_lifeline_in_child() -> None:
    """After fork: the parent's write end must not live on in the child."""
    global _lifeline, _owner_pid, _lock
    _lock = threading.Lock()
    if _lifeline is not None:
        try:
            os.close(_lifeline[1])
        except OSError:
            pass
    _lifeline = None
    _owner_pid = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_lifeline_in_child)


def child_setup(
    lifeline: int,
    title: str,
    pdeathsig: bool,
    short: str = "concur-worker",
    own_group: bool = False,
) -> None:
    """Tie this (child) process to its parent; see the module docstring.

    ``pdeathsig`` only when the thread that started the child lives as long
    as the parent process (a pool's supervisor, or the main thread).
    ``title`` names the process in ``ps`` when setproctitle is installed;
    ``short`` (15 bytes at most) is its kernel name either way.
    ``own_group`` makes the child the leader of a new process group.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _drop_fork_server_link()
    _write_whole_lines(sys.stderr)
    if own_group:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
    if pdeathsig:
        set_pdeathsig()
    set_title(title, short)
    _kill_on_eof(lifeline)
    if _at_eof(lifeline):  # the parent died before we got here
        _orphaned()
    watcher = threading.Thread(
        target=_watch_lifeline, args=(lifeline,), name="concur-lifeline", daemon=True
    )
    watcher.start()


def _write_whole_lines(stream: Any) -> None:
    if isinstance(stream, io.TextIOWrapper) and not stream.line_buffering:
        with contextlib.suppress(ValueError, OSError):
            stream.reconfigure(line_buffering=True, write_through=False)


_kept: list[int] = []  # descriptors that must stay open for the kernel to watch


def _kill_on_eof(lifeline: int) -> None:
    """Have the kernel SIGKILL this process's group when the lifeline hits EOF.

    Linux sends the signal chosen with ``F_SETSIG`` to the owner set with
    ``F_SETOWN`` (a negative id: a process group) when an ``O_ASYNC`` pipe
    becomes readable, which for the lifeline means its one writer, the
    parent, is gone. No code of this process runs, so it works while a C
    call holds the GIL, and it takes what a task started with it. The
    settings belong to an open file description, which the parent and
    every sibling share for the inherited lifeline, so a new description
    of the same pipe is opened through /proc for this process alone.
    """
    setsig = getattr(fcntl, "F_SETSIG", None)
    if setsig is None or not sys.platform.startswith("linux"):
        return
    try:
        fd = os.open(f"/proc/self/fd/{lifeline}", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return
    group = os.getpgid(0)
    owner = -group if group == os.getpid() else os.getpid()
    try:
        fcntl.fcntl(fd, fcntl.F_SETOWN, owner)
        fcntl.fcntl(fd, setsig, signal.SIGKILL)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    except OSError:
        os.close(fd)
        return
    _kept.append(fd)


def _drop_fork_server_link() -> None:
    """Close the fork server's "alive" pipe inherited from the parent.

    A child of the fork server receives the parent's write end of it (for
    children of its own). Dropping it, and the server's address with it,
    lets the server see the parent die; code in this process that uses
    forkserver later gets a server of its own.
    """
    forkserver = sys.modules.get("multiprocessing.forkserver")
    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if server is None or fd is None:
        return
    with contextlib.suppress(OSError):
        os.close(fd)
    for name in ("_forkserver_alive_fd", "_forkserver_address", "_forkserver_pid"):
        setattr(server, name, None)


def _watch_lifeline(fd: int) -> None:
    while True:
        try:
            data = os.read(fd, 1)
        except InterruptedError:
            continue
        except OSError:
            break
        if not data:
            break
    _orphaned()


def _orphaned() -> None:
    """The parent is gone: take this process's group (what its tasks
    started) down with it, then leave."""
    if os.getpgid(0) == os.getpid():
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(ORPHAN_EXIT)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a worker's process group; nothing if it is already empty.

    Call it only while the leader is unreaped or its group still has
    members: the kernel does not reuse an id in use as a group id.
    """
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)


def _at_eof(fd: int) -> bool:
    import select

    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def task_titles(title: str) -> Callable[[str | None, int], None] | None:
    """With setproctitle, a function that shows a worker's current task in
    its command line, for ``concur ps`` (about 3 µs a call); else None.

    The title reads ``TITLE [idle]`` or ``TITLE [task ID NAME since EPOCH]``.
    """
    show = title_setter()
    if show is None:
        return None
    idle = f"{title} [idle]"
    libc = load_libc()
    # setproctitle also renames the kernel's short name; keep ours ("concur-worker")
    rename = getattr(libc, "prctl", None)
    short = os.path.basename(title.split()[0]).encode()[:15]

    def set_task(name: str | None, task_id: int) -> None:
        show(idle if name is None else f"{title} [task {task_id} {name} since {time.time():.3f}]")
        if rename is not None:
            rename(15, short, 0, 0, 0)  # PR_SET_NAME

    return set_task


def main_guard_error(what: str) -> MainGuardMissing:
    return MainGuardMissing(
        f"{what} was started while a child process was importing the main module.\n"
        "Put the code that starts processes under a main guard:\n\n"
        '    if __name__ == "__main__":\n'
        "        main()\n\n"
        "Child processes import your script again; the guard keeps them from "
        "starting processes of their own."
    )


def check_not_bootstrapping(what: str) -> None:
    """Refuse to start processes while a child imports the main module.

    Under the spawn and forkserver start methods a child imports the main
    script again; code at its top level that starts processes would start
    them again in every child (CPython raises a long RuntimeError from deep
    inside multiprocessing, or hangs). The child prints the fix once and
    exits with ``MAIN_GUARD_EXIT``; the parent, seeing that status, raises
    ``MainGuardMissing`` with the same text.
    """
    if getattr(mp_process.current_process(), "_inheriting", False):
        sys.stderr.write(f"concur: {main_guard_error(what)}\n")
        sys.stderr.flush()
        os._exit(MAIN_GUARD_EXIT)


_starting = threading.local()
_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")


def _preparation_data(name: str, _original: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    data = _original(name)
    if getattr(_starting, "without_main", False):
        for key in _MAIN_KEYS:
            data.pop(key, None)
    return data


def _install_preparation_hook() -> None:
    """Wrap ``multiprocessing.spawn.get_preparation_data`` once.

    Spawn and forkserver launches look it up at start time; the wrapper
    changes nothing except for processes started inside
    ``starting_without_main()`` on this thread.
    """
    original = mp_spawn.get_preparation_data
    if getattr(original, "_concur_wrapped", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        return _preparation_data(name, original)

    get_preparation_data._concur_wrapped = True  # type: ignore[attr-defined]
    mp_spawn.get_preparation_data = get_preparation_data


@contextlib.contextmanager
def starting_without_main() -> Iterator[None]:
    """Processes started in this block (on this thread) skip re-running main."""
    _install_preparation_hook()
    _starting.without_main = True
    try:
        yield
    finally:
        _starting.without_main = False
