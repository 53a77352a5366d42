"""Facts about processes and workers. The one module that talks to psutil."""

from __future__ import annotations

from dataclasses import dataclass


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
