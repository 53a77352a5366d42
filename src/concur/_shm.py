"""Large buffers through shared memory instead of through the worker pipes.

Pickle protocol 5 (PEP 574) hands a large contiguous buffer (a numpy array's
data, and so pandas' and Arrow's) to a callback instead of copying it into
the pickle. Every buffer of at least ``THRESHOLD`` bytes goes into one
anonymous memory file (``memfd_create``) per message, owned by the sender;
the message itself carries only where each buffer is::

    sender                                    receiver
    pickle(obj, buffer_callback)              open /proc/<pid>/fd/<fd>, check inode
    big buffers ─► memfd (one copy)           mmap it (no copy), slice the buffers
    pipe: header + table + small pickle ───►  pickle.loads(..., buffers=slices)

The memory has no name: it lives while the sender holds the descriptor or a
receiver maps it, and the kernel frees it when the last of them is gone,
however the processes end (a crash, a time limit, the parent SIGKILLed).
Nothing is ever created in ``/dev/shm``, so nothing needs a reaper.

Who holds what:

* arguments: the caller's task record holds the segment until the task is
  settled (a retry reads it again); a worker maps it read-only, so an array
  argument is read-only there and a write raises, and keeps the mapping for
  its next task (``Mappings``) until the pool says RELEASE as it goes idle;
* results: the worker holds its reply's segment until the pool's next
  message to it (the next task, or ``RELEASE``, sent once the caller mapped
  it); the caller maps it copy-on-write, so a result array is writable and
  costs no copy until written;
* ``Placement`` (one ``map`` or ``imap`` call): a buffer of the same object
  sent again in a later message reuses the first message's place instead of
  a new copy.

Where ``memfd_create`` or ``/proc`` is missing (not Linux), every buffer
stays in the pickle, as before.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import struct
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import psutil

THRESHOLD = 1 << 20  # bytes: smaller buffers stay in the pickle
ENABLED = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")
_PAGE = mmap.PAGESIZE
_TABLE_LEN = struct.Struct("<I")

# One buffer's place: (pid, fd, inode, offset, length).
Place = tuple[int, int, int, int, int]


class SharedMemoryError(Exception):
    """Shared memory could not be written or mapped (raised inside concur and
    turned into the task's SerializationError by the caller of pack/unpack)."""


class Segment:
    """An anonymous memory file this process owns; closed when dropped."""

    __slots__ = ("__weakref__", "_close", "fd", "ino", "pid", "size")

    def __init__(self, size: int) -> None:
        available = psutil.virtual_memory().available
        if size > available:
            raise SharedMemoryError(
                f"{size / 1e6:.1f} MB of shared memory needed, {available / 1e6:.1f} MB "
                "available: send smaller pieces (or free memory)"
            )
        self.pid = os.getpid()
        self.fd = os.memfd_create(f"concur-{self.pid}", os.MFD_CLOEXEC)
        self._close = weakref.finalize(self, os.close, self.fd)
        self.ino = os.fstat(self.fd).st_ino
        self.size = size
        _live.add(self)

    def write(self, offset: int, data: memoryview) -> None:
        try:
            while data.nbytes:
                written = os.pwrite(self.fd, data, offset)
                data, offset = data[written:], offset + written
        except OSError as exc:
            self.close()
            raise SharedMemoryError(
                f"could not write {self.size / 1e6:.1f} MB of shared memory: {exc}"
            ) from exc

    def place(self, offset: int, length: int) -> Place:
        return (self.pid, self.fd, self.ino, offset, length)

    def close(self) -> None:
        self._close()


_live: weakref.WeakSet[Segment] = weakref.WeakSet()


def _forget_after_fork() -> None:
    """A forked child does not keep its parent's segments alive: it closes
    its copies of their descriptors (the parent's stay open)."""
    for segment in list(_live):
        if segment._close.detach() is not None:
            with contextlib.suppress(OSError):
                os.close(segment.fd)
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class Placement:
    """Where buffers of objects already sent during one ``map`` or ``imap``
    call are, so a later message reuses a place instead of a new copy.

    Only for input held whole before the call (a list or tuple): a
    generator may yield one buffer refilled, which must be sent again.
    An entry holds its segment weakly: the tasks that refer to it hold it,
    and once they are settled the next message places the object anew, so
    a long input of different arrays is not kept in shared memory to the
    end. An entry must not outlive its object either (a new object with
    the same ``id`` would be taken for it): it holds the object weakly and
    goes when it does, or strongly where the object takes no weak reference.
    """

    __slots__ = ("_placed",)

    def __init__(self) -> None:
        self._placed: dict[int, tuple[Any, weakref.ref[Segment], int, int]] = {}

    def find(self, owner: Any) -> tuple[Segment, int, int] | None:
        entry = self._placed.get(id(owner))
        if entry is None:
            return None
        held, segment_ref, offset, length = entry
        segment = segment_ref()
        if (held() if isinstance(held, weakref.ref) else held) is not owner or segment is None:
            return None
        return segment, offset, length

    def remember(self, owner: Any, segment: Segment, offset: int, length: int) -> None:
        key = id(owner)
        placed = self._placed

        def forget(ref: weakref.ref[Any]) -> None:
            # Runs as the object is freed, before its id can be reused.
            entry = placed.get(key)
            if entry is not None and entry[0] is ref:
                del placed[key]

        try:
            held: Any = weakref.ref(owner, forget)
        except TypeError:
            held = owner
        placed[key] = (held, weakref.ref(segment), offset, length)


class _Local(threading.local):
    placement: Placement | None = None


_local = _Local()


@contextlib.contextmanager
def placing(placement: Placement | None = None) -> Iterator[None]:
    """Within it, this thread's messages place each large buffer once: in
    ``placement``, which may last over many of these, or in a new one."""
    saved, _local.placement = _local.placement, placement or Placement()
    try:
        yield
    finally:
        _local.placement = saved


class Token(bytearray):
    """A ``concur.share()`` handle's mark in a pickle: a one-byte buffer the
    handle pickles, so the pickler's ``buffer_callback`` sees it and keeps
    ``held`` (the handle's segment) alive with the message."""

    __slots__ = ("held",)
    held: Any


class Outgoing:
    """The out-of-band buffers of one message being pickled.

    ``callback`` is the pickler's ``buffer_callback``; ``finish`` writes the
    new buffers to one segment and returns the table the receiver needs.
    ``keep`` is every segment the message refers to, which its sender must
    hold until the receiver has mapped them.
    """

    __slots__ = ("final", "keep", "new", "placement", "places", "threshold")

    def __init__(self, threshold: int = THRESHOLD) -> None:
        self.threshold = threshold if ENABLED else None
        self.placement = _local.placement
        self.reset()

    def reset(self) -> None:
        """Forget what a failed attempt at pickling recorded."""
        self.places: list[Place | int] = []  # a place, or an index into ``new``
        self.final: list[Place] = []  # every buffer's place, once finished
        self.new: list[tuple[Any, memoryview]] = []
        self.keep: list[Any] = []

    def callback(self, buffer: pickle.PickleBuffer) -> bool:
        """False (out of band) for a large buffer, True (in the pickle) otherwise."""
        owner = memoryview(buffer).obj
        if type(owner) is Token:
            self.keep.append(owner.held)
            return True
        if self.threshold is None or memoryview(buffer).nbytes < self.threshold:
            return True
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: pickle decides
            return True
        found = None if self.placement is None else self.placement.find(owner)
        if found is not None:
            segment, offset, length = found
            self.keep.append(segment)
            self.places.append(segment.place(offset, length))
        else:
            self.places.append(len(self.new))
            self.new.append((owner, raw))
        return False

    def finish(self, first: bytes = b"") -> bytes:
        """Write the new buffers (after ``first``, if given, as buffer 0) and
        return the table, prefixed by its length, to put before the pickle."""
        pieces = ([memoryview(first)] if first else []) + [raw for _, raw in self.new]
        offsets, size = [], 0
        for piece in pieces:
            offsets.append(size)
            size += -(-piece.nbytes // _PAGE) * _PAGE
        places: list[Place] = []
        if pieces:
            segment = Segment(size)
            for offset, piece in zip(offsets, pieces, strict=True):
                segment.write(offset, piece)
            self.keep.append(segment)
            new_places = [segment.place(o, p.nbytes) for o, p in zip(offsets, pieces, strict=True)]
            if first:
                places.append(new_places.pop(0))
            self._remember(segment, new_places)
            places += [p if not isinstance(p, int) else new_places[p] for p in self.places]
        else:
            places = [p for p in self.places if not isinstance(p, int)]
        self.final = places
        table = pickle.dumps(places, pickle.HIGHEST_PROTOCOL)
        return _TABLE_LEN.pack(len(table)) + table

    def _remember(self, segment: Segment, places: list[Place]) -> None:
        if self.placement is None:
            return
        for (owner, _), (_, _, _, offset, length) in zip(self.new, places, strict=True):
            self.placement.remember(owner, segment, offset, length)


# Large bytes-like objects: pickle keeps exact ``bytes`` and ``bytearray``
# in the pickle (no hook sees them), and refuses ``memoryview``. ``lift``
# wraps each large one it finds near the top of a message in ``_Lifted``,
# which pickles as a buffer (so out of band) and is rebuilt, by a copy out
# of the shared memory, as ``bytes`` (``bytearray`` for a bytearray).
_LIFT_DEPTH = 4  # a chunk's message: (fn, [(arg, ...), ...]) holds an argument three down
_LIFT_BUDGET = 4096  # elements looked at, at most: many small items are not walked through


class _Lifted:
    __slots__ = ("data", "kind")

    def __init__(self, data: Any, kind: type) -> None:
        self.data = data
        self.kind = kind

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (self.kind, (pickle.PickleBuffer(self.data),))


class _TooMany(Exception):
    pass


def lift(obj: Any) -> Any:
    """``obj`` with every large ``bytes``, ``bytearray`` or contiguous
    ``memoryview`` in it (itself, or inside tuples, lists and dicts a few
    levels down) made to travel out of band; ``obj`` itself when there is
    none. Containers rebuilt keep the sharing they had within the message."""
    try:
        return _lift(obj, _LIFT_DEPTH, [_LIFT_BUDGET], {})
    except _TooMany:
        return obj


def _lift(obj: Any, depth: int, budget: list[int], memo: dict[int, Any]) -> Any:
    kind = type(obj)
    if kind is bytes or kind is bytearray or kind is memoryview:
        if kind is memoryview and not obj.c_contiguous:
            return obj
        if (obj.nbytes if kind is memoryview else len(obj)) < THRESHOLD:
            return obj
        if id(obj) not in memo:
            memo[id(obj)] = _Lifted(obj, bytearray if kind is bytearray else bytes)
        return memo[id(obj)]
    if depth == 0 or not (kind is tuple or kind is list or kind is dict) or not obj:
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    budget[0] -= len(obj)
    if budget[0] < 0:
        raise _TooMany
    values = obj.values() if kind is dict else obj
    lifted = [_lift(value, depth - 1, budget, memo) for value in values]
    if all(new is old for new, old in zip(lifted, values, strict=True)):
        result = obj
    elif kind is dict:
        result = dict(zip(obj.keys(), lifted, strict=True))
    else:
        result = kind(lifted)
    memo[id(obj)] = result
    return result


class OutOfBand(Exception):
    """Raised by ``PROBE``: this message needs an ``Outgoing``."""


class Probe:
    """A first attempt at a message, with nothing allocated: its callback
    keeps small buffers in the pickle and raises OutOfBand at a large one
    or a handle's token, so the message is pickled again with an
    ``Outgoing``."""

    @staticmethod
    def callback(buffer: pickle.PickleBuffer) -> bool:
        if memoryview(buffer).nbytes < THRESHOLD and type(memoryview(buffer).obj) is not Token:
            return True
        raise OutOfBand

    def reset(self) -> None:
        pass


PROBE = Probe()


class Mappings:
    """A worker's read-only mappings, kept from one task to the next.

    Mapping a segment is cheap; touching it page by page the first time is
    not (a fault per page). The tasks of one ``map`` that refer to the same
    segment reuse the mapping the previous task made. ``next_task`` drops
    every mapping the previous task used and this one does not; ``release``
    drops them all (the pool says RELEASE when the worker goes idle).
    """

    def __init__(self) -> None:
        self.current: dict[tuple[int, int, int], memoryview] = {}
        self.previous: dict[tuple[int, int, int], memoryview] = {}

    def next_task(self) -> None:
        if self.current:
            self.previous, self.current = self.current, {}

    def done_with_previous(self) -> None:
        if self.previous:
            self.previous = {}

    def release(self) -> None:
        self.current, self.previous = {}, {}

    def get(self, pid: int, fd: int, ino: int) -> memoryview:
        key = (pid, fd, ino)
        view = self.current.get(key)
        if view is None:
            view = self.previous.pop(key, None) or _map(pid, fd, ino, writable=False)
            self.current[key] = view
        return view


def incoming(
    body: memoryview, writable: bool, mappings: Mappings | None = None
) -> tuple[memoryview, list[memoryview]]:
    """Split a shared message's body into its pickle and its mapped buffers.

    ``writable`` maps copy-on-write (a caller's result); otherwise read-only
    (a worker's arguments: a write raises), reusing ``mappings``. Raises
    SharedMemoryError when the sender is gone.
    """
    (length,) = _TABLE_LEN.unpack_from(body)
    end = _TABLE_LEN.size + length
    places: list[Place] = pickle.loads(body[_TABLE_LEN.size : end])
    return body[end:], map_places(places, writable, mappings)


def map_places(
    places: list[Place], writable: bool, mappings: Mappings | None = None
) -> list[memoryview]:
    maps: dict[tuple[int, int], memoryview] = {}
    buffers = []
    for pid, fd, ino, offset, length in places:
        view = maps.get((pid, fd))
        if view is None:
            if mappings is not None and not writable:
                view = mappings.get(pid, fd, ino)
            else:
                view = _map(pid, fd, ino, writable)
            maps[(pid, fd)] = view
        buffers.append(view[offset : offset + length])
    return buffers


# The worker's mappings (one task at a time: no lock needed).
worker_mappings = Mappings()


def _map(pid: int, fd: int, ino: int, writable: bool) -> memoryview:
    try:
        local = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SharedMemoryError(
            f"the shared memory of process {pid} is gone (it exited?): {exc}"
        ) from exc
    try:
        info = os.fstat(local)
        if info.st_ino != ino:
            raise SharedMemoryError(f"the shared memory of process {pid} is gone (it exited?)")
        access = mmap.ACCESS_COPY if writable else mmap.ACCESS_READ
        return memoryview(mmap.mmap(local, info.st_size, access=access))
    except OSError as exc:  # no address space left to map it (ENOMEM)
        raise SharedMemoryError(
            f"the shared memory of process {pid} cannot be mapped: {exc}"
        ) from exc
    finally:
        os.close(local)
