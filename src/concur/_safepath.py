"""Start multiprocessing's helper processes without the working directory on ``sys.path``.

The fork server and the resource tracker run ``python -c ...``, which puts
the current directory first on ``sys.path``: a file there named like a
module they import (selectors.py, cloudpickle.py) would run in their place,
and the fork server's imports are every worker's. From Python 3.11,
``PYTHONSAFEPATH`` leaves it off; concur sets it only while a helper
starts (not while one runs: another thread's subprocess started in that
moment would inherit it), and the fork server drops it again once it has
loaded concur (``forget``), so the workers and what they start see the
environment the program has. Python 3.10 has no such switch.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

_MARK = "CONCUR_SET_PYTHONSAFEPATH"
_lock = threading.Lock()


@contextlib.contextmanager
def helpers_started_safely() -> Iterator[None]:
    """Processes multiprocessing starts inside this block get ``PYTHONSAFEPATH``."""
    if not hasattr(sys.flags, "safe_path") or "PYTHONSAFEPATH" in os.environ:  # 3.11+
        yield
        return
    with _lock:
        os.environ["PYTHONSAFEPATH"] = "1"
        os.environ[_MARK] = "1"
        try:
            yield
        finally:
            forget()


def start_resource_tracker() -> None:
    """multiprocessing's resource tracker, started safely if it is not running."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    if getattr(tracker, "_fd", None) is not None:
        resource_tracker.ensure_running()  # running (or restarted if it died)
        return
    with helpers_started_safely():
        resource_tracker.ensure_running()


def start_forkserver() -> None:
    """multiprocessing's fork server, started safely if it is not running."""
    from multiprocessing import forkserver

    from .ps import alive

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if pid is not None and alive(pid):
        return
    with helpers_started_safely():
        forkserver.ensure_running()  # reaps a dead one first


def forget() -> None:
    """Undo what ``helpers_started_safely`` set, in the process it was inherited by."""
    if os.environ.pop(_MARK, None) is not None:
        os.environ.pop("PYTHONSAFEPATH", None)
