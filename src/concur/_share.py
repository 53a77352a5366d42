"""``concur.share(obj)``: an object placed in shared memory once, for many tasks.

    data = concur.share(big_array)          # written once, here
    pool.map(score, [data] * 100)           # each task gets the array itself
    data.close()                            # or ``with concur.share(...) as data:``

The whole pickle goes into one anonymous memory segment (``_shm``): the
small part as buffer 0, every out-of-band buffer (numpy data, of any size)
after it. A task's message carries only the places; a worker maps them
read-only and unpickles, so arrays there are views of the one copy and a
write raises. The caller holds the segment while the handle is open and
while a task that refers to it is not settled.
"""

from __future__ import annotations

import pickle
from typing import Any

from . import _namespace, _shm, _task
from .errors import SerializationError


class Shared:
    """A handle on an object placed once in shared memory; ``value`` is the
    object itself. Pass the handle to tasks: a process task receives the
    object rebuilt on the shared copy (its arrays read-only), a thread task
    the object itself (when the handle is an argument of its own).
    """

    def __init__(self, obj: Any) -> None:
        self.value = obj
        self._places: list[_shm.Place] | None = None
        self._keep: list[Any] = []
        if not _shm.ENABLED:
            return  # the object is pickled with each task instead
        out = _shm.Outgoing(threshold=0)
        out.placement = None  # a copy of its own, whatever else was sent
        data = _task.dumps(obj, out)
        try:
            out.finish(first=data)
        except _shm.SharedMemoryError as exc:
            raise SerializationError(f"cannot share {type(obj).__name__}: {exc}") from exc
        self._keep = out.keep
        self._places = out.final

    @property
    def closed(self) -> bool:
        return self._places is not None and not self._keep

    def close(self) -> None:
        """Free the shared copy once no task that received it is pending."""
        self._keep = []

    def __enter__(self) -> Shared:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        if self._places is None:
            return (_plain, (self.value,))
        if not self._keep:
            raise SerializationError(
                "this concur.share() handle was closed: share the object again "
                "(or keep the handle open until the tasks that use it are submitted)",
                what="shared object",
            )
        # The token's buffer tells the message's pickler to hold the segment
        # until the task is settled (``_shm.Token``).
        token = _shm.Token(b"s")
        token.held = self._keep
        mark = pickle.PickleBuffer(token) if protocol >= 5 else None
        return (_attach, (self._places, mark))

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<concur.Shared {type(self.value).__name__} {state}>"


def _plain(value: Any) -> Any:
    return value


def _attach(places: list[_shm.Place], _mark: Any = None) -> Any:
    """In a worker: the shared object, its buffers mapped read-only."""
    try:
        first, *buffers = _shm.map_places(places, False, _shm.worker_mappings)
    except _shm.SharedMemoryError as exc:
        raise SerializationError(f"a shared object is gone: {exc}", what="shared object") from exc
    return _namespace.loads(first, buffers)


def values(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` with each handle replaced by its object, for work that runs
    in this process (threads share memory: nothing to map)."""
    for arg in args:
        if type(arg) is Shared:
            return tuple(a.value if type(a) is Shared else a for a in args)
    return args


def share(obj: Any) -> Shared:
    """Place ``obj`` in shared memory once; pass the handle to many tasks.

    Each process task that receives the handle (as an argument, or inside
    one) gets ``obj`` itself, rebuilt from the one shared copy: numpy
    arrays (and what is built on them) are read-only views there, so
    nothing is copied per task and a write raises ``ValueError``. The
    memory is freed by ``close()`` (or leaving ``with``) once no task that
    received it is still pending; it never outlives this process.
    """
    return Shared(obj)
