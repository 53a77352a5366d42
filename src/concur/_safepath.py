"""Start multiprocessing's helper processes without the working directory on ``sys.path``.

The fork server and the resource tracker run ``python -c ...``, which puts
the current directory first on ``sys.path``: a file there named like a
module they import (selectors.py, cloudpickle.py) would run in their place,
and the fork server's imports are every worker's. From Python 3.11,
``PYTHONSAFEPATH`` leaves it off; concur sets it only while a helper
starts, and the fork server drops it again once it has loaded concur
(``forget``), so the workers and what they start see the environment the
program has. Python 3.10 has no such switch.
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


def forget() -> None:
    """Undo what ``helpers_started_safely`` set, in the process it was inherited by."""
    if os.environ.pop(_MARK, None) is not None:
        os.environ.pop("PYTHONSAFEPATH", None)
