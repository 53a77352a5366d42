"""Facts about processes and workers. The one module that talks to psutil."""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class WorkerInfo:
    """One worker of a pool, as ``pool.workers()`` reports it.

    ``state`` is ``"idle"``, ``"busy"`` or ``"exiting"`` (being replaced:
    retired after ``max_tasks_per_child`` or ``max_memory_per_child``, or
    stopped after a timeout or cancel); a thread pool also reports
    ``"abandoned"`` for a thread still running a task that timed out.
    """

    name: str
    pid: int
    ident: int | None
    state: str
    task_id: int | None
    task: str | None
    running_for: float | None
    tasks_done: int
    rss: int | None


def rss(pid: int) -> int | None:
    """Resident memory of a process in bytes, or None if it is gone."""
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def alive(pid: int) -> bool:
    """The process runs (it has not exited, not even as a zombie)."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


_self = None


def own_rss() -> int:
    """Resident memory of this process in bytes (cheap after the first call)."""
    global _self
    import psutil

    if _self is None:
        _self = psutil.Process()
    return int(_self.memory_info().rss)


_UNITS = {
    "": 1,
    "B": 1,
    "K": 1024,
    "KB": 1024,
    "KIB": 1024,
    "M": 1024**2,
    "MB": 1024**2,
    "MIB": 1024**2,
    "G": 1024**3,
    "GB": 1024**3,
    "GIB": 1024**3,
}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"512MB"`` or ``"2 GiB"`` (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, ""
    elif isinstance(value, str):
        text = value.strip().upper().replace(" ", "")
        digits = text.rstrip("KMGIB")
        number_text, unit = digits, text[len(digits) :]
        try:
            number = float(number_text)  # type: ignore[assignment]
        except ValueError:
            number = -1
    else:
        number, unit = -1, ""
    if unit not in _UNITS or number <= 0:
        raise ValueError(
            f"a memory size must be a positive number of bytes or a string like '512MB', "
            f"not {value!r}"
        )
    return int(number * _UNITS[unit])


# -- concur ps ------------------------------------------------------------------

ROLES = {
    "concur-worker": "pool worker",
    "concur-spawn": "spawned worker",
    "concur-server": "server master",
    "concur-session": "server child (process model)",
    "concur-prefork": "server child (prefork)",
    "concur-hybrid": "server child (hybrid)",
}
ZOMBIE_NOTE = (
    "zombie: it has exited, but its parent has not collected its exit status "
    "(wait); it holds only a pid. The parent must reap it, or exit so init does."
)
ORPHAN_NOTE = (
    "orphan: its parent exited and {adopter} adopted it; it runs on with no one "
    "to collect its result. Stop it (kill {pid}) if no one needs it."
)
_ADOPTERS = {"init", "systemd", "tini", "dumb-init", "docker-init", "launchd"}
_TASK = re.compile(r"\[task (\d+) (.+) since ([\d.]+)\]\s*$")
_IDLE = re.compile(r"\[idle\]\s*$")
UNKNOWN_NOTE = "unknown (pip install setproctitle to see its task)"


@dataclass
class ProcessRow:
    """One process of a concur program, as ``concur ps`` shows it."""

    pid: int
    ppid: int
    depth: int
    name: str
    role: str
    state: str
    cpu_percent: float
    rss: int
    threads: int
    task: str | None = None
    task_id: int | None = None
    running_for: float | None = None
    # A pool worker's "busy" or "idle", from its title; "unknown" when it
    # could not set one (setproctitle missing). None for other processes.
    activity: str | None = None
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    thread_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _role(name: str, cmdline: list[str], depth: int = 0) -> str:
    first = cmdline[0] if cmdline else ""
    for prefix, role in ROLES.items():
        if name.startswith(prefix) or first.startswith(prefix):
            return role
    text = " ".join(cmdline[:4])
    if "forkserver" in text:
        return "fork server"
    if "resource_tracker" in text:
        return "resource tracker"
    return "program" if depth == 0 else "child"


def _is_concur(proc: Any) -> bool:
    import psutil

    try:
        name = proc.name()
        if name.startswith("concur"):
            return True
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if cmdline and cmdline[0].startswith("concur"):
        return True
    return any(part in ("concur", "-mconcur") or part.endswith("/concur") for part in cmdline[:3])


def _is_helper(proc: Any) -> bool:
    """A concur process, or multiprocessing's fork server between a program and its workers."""
    import psutil

    try:
        return _is_concur(proc) or _role(proc.name(), proc.cmdline(), 1) == "fork server"
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _program_roots(pid: int | None) -> list[Any]:
    """The processes to show trees from: ``pid``, or every concur program of this user."""
    import psutil

    if pid is not None:
        return [psutil.Process(pid)]
    me = os.getpid()
    user = psutil.Process().uids().real
    roots: dict[int, Any] = {}
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.pid == me or proc.info["uids"].real != user or not _is_concur(proc):
                continue
            root = proc
            # climb to the program that started it: the topmost ancestor that
            # is itself concur, or the direct parent of the topmost concur process
            parent = root.parent()
            while parent is not None and parent.pid not in (0, 1) and _is_helper(parent):
                root, parent = parent, parent.parent()
            if (
                _role(root.name(), root.cmdline()) != "program"
                and parent is not None
                and parent.pid not in (0, 1, me)
                and parent.name() not in _ADOPTERS
            ):
                root = parent
            roots[root.pid] = root
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return [roots[pid] for pid in sorted(roots)]


# psutil measures CPU % between two calls on the *same* Process object, so
# snapshots (the first call, then each --watch refresh) share these.
_known: dict[int, Any] = {}


def _same(proc: Any) -> Any:
    """The Process object an earlier snapshot made for this process, if any."""
    known = _known.get(proc.pid)
    if known is not None and known == proc:  # psutil compares pid and start time
        return known
    _known[proc.pid] = proc
    return proc


def _row(proc: Any, depth: int, now: float, with_threads: bool) -> ProcessRow | None:
    import psutil

    proc = _same(proc)
    try:
        with proc.oneshot():
            name = proc.name()
            status = proc.status()
            ppid = proc.ppid()
            zombie = status == psutil.STATUS_ZOMBIE
            cmdline = [] if zombie else proc.cmdline()
            row = ProcessRow(
                pid=proc.pid,
                ppid=ppid,
                depth=depth,
                name=name,
                role=_role(name, cmdline, depth),
                state=str(status),
                cpu_percent=0.0 if zombie else proc.cpu_percent(interval=None),
                rss=0 if zombie else proc.memory_info().rss,
                threads=0 if zombie else proc.num_threads(),
            )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    _read_title(row, " ".join(cmdline), now)
    if zombie:
        row.flags.append("zombie")
        row.notes.append(ZOMBIE_NOTE)
    adopter = _adopter(ppid)
    if adopter is not None:
        row.flags.append("orphan")
        row.notes.append(ORPHAN_NOTE.format(adopter=adopter, pid=proc.pid))
    if with_threads and not zombie:
        row.thread_names = _thread_names(proc.pid)
    return row


def _read_title(row: ProcessRow, title: str, now: float) -> None:
    """The task a worker's title names (``TITLE [task ID NAME since EPOCH]`` or ``[idle]``)."""
    match = _TASK.search(title)
    if match:
        row.task_id = int(match.group(1))
        row.task = match.group(2)
        row.running_for = max(now - float(match.group(3)), 0.0)
        row.activity = "busy"
    elif _IDLE.search(title):
        row.activity = "idle"
    elif row.role == "pool worker" and row.state != "zombie":
        row.activity = "unknown"


def _adopter(ppid: int) -> str | None:
    """The name of the process that adopted an orphan, or None if ``ppid`` is
    an ordinary parent (init, or a per-user subreaper such as systemd)."""
    import psutil

    if ppid == 1:
        return "init (pid 1)"
    try:
        name = psutil.Process(ppid).name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return f"{name} (pid {ppid})" if name in _ADOPTERS else None


def _thread_names(pid: int) -> list[str]:
    names = []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                names.append(f"{tid}:{comm.read().strip()}")
    except OSError:
        pass
    return names


def snapshot(pid: int | None = None, threads: bool = False) -> list[ProcessRow]:
    """The process trees of concur programs (or of ``pid``), depth-first."""
    import psutil

    now = time.time()
    rows: list[ProcessRow] = []
    seen: set[int] = set()

    def walk(proc: Any, depth: int) -> None:
        if proc.pid in seen or proc.pid == os.getpid():
            return
        seen.add(proc.pid)
        row = _row(proc, depth, now, threads)
        if row is None:
            return
        rows.append(row)
        try:
            children = sorted(proc.children(), key=lambda p: p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        for child in children:
            walk(_same(child), depth + 1)

    for root in _program_roots(pid):
        walk(root, 0)
    return rows


def render(rows: list[ProcessRow]) -> Any:
    """A rich renderable: the table, then one note per zombie or orphan."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="concur ps", title_justify="left")
    for column, justify in (
        ("pid", "right"),
        ("ppid", "right"),
        ("name", "left"),
        ("role", "left"),
        ("state", "left"),
        ("cpu %", "right"),
        ("rss", "right"),
        ("threads", "right"),
        ("task", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        # Every text comes from a program (names, task labels): plain Text, never markup.
        state = Text(row.state, style="bold red" if "zombie" in row.flags else "")
        if "orphan" in row.flags:
            state.append(" ORPHAN", style="bold red")
        table.add_row(
            Text(str(row.pid)),
            Text(str(row.ppid)),
            Text("  " * row.depth + row.name),
            Text(row.role),
            state,
            Text(f"{row.cpu_percent:.0f}"),
            Text(_size(row.rss) if row.rss else "-"),
            Text(str(row.threads) if row.threads else "-"),
            Text(_task_cell(row)),
        )
        if row.thread_names:
            table.add_row("", "", Text("  " * (row.depth + 1) + ", ".join(row.thread_names)))
    parts: list[Any] = [table]
    if not rows:
        parts = [Text("no concur program is running (give a PID to inspect any process)")]
    for row in rows:
        for note in row.notes:
            parts.append(Text(f"{row.pid}: {note}"))
    return Group(*parts)


def _task_cell(row: ProcessRow) -> str:
    if row.task is not None:
        return f"#{row.task_id} {row.task} for {row.running_for:.1f} s"
    if row.activity == "unknown":
        return UNKNOWN_NOTE
    return row.activity or ""


def _size(value: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)
