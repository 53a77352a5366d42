"""Task records and what travels between the caller and a worker process.

A call is serialized once, in the caller, when it is submitted, so an
argument that cannot be pickled fails that one future at once and nothing
else. The bytes then go to whichever worker is free (and again to a fresh one
if the task is retried). Replies carry the outcome and the time the call took
(wall and CPU), which the chunk sizer and the supervisor use.

Wire format: each message is one ``_wire`` frame (``Connection``'s framing), a fixed
binary header and then a pickle. The header carries what the supervisor must
know even when the pickle cannot be read (which task, whether the worker is
retiring), so a bad payload costs its own task and nothing else.

A plain function whose pickle cannot change unseen (no closure or
attributes; defaults and the globals it names are immutable scalars,
modules or importable functions) is pickled once and its bytes reused
while its code, defaults and those globals stay the same objects
(``function_blob``); the worker keeps the functions it loaded by those
bytes, so such a function from ``__main__``, which travels by value, is
neither pickled nor rebuilt per call. Any other callable is pickled with
each call.

    caller → worker   TASK_HEAD (kind, flags, task_id) + body
                      CALL     FN_LEN + fn_blob + (args, kwargs), or
                               FN_LEN (0) + (fn, args, kwargs)
                      CHUNK    FN_LEN + fn_blob + [args, ...]
                      EXIT     no body: exit cleanly
                      RELEASE  no body: the last reply's shared memory is mapped
    worker → caller   REPLY_HEAD (kind, flags, task_id, wall_s, cpu_s) + body
                      READY        no body: set-up and initializer done
                      INIT_FAILED  body: packed exception of the initializer
                      DONE         body: outcome of task_id (flags: RETIRING)
                      LOG          body: a log record's attributes (_logs)
                      outcome: (OK, value) | (ERR, packed exception)
                               | (CHUNK_DONE, [outcome, ...])

A function's bytes travel beside the pickle, not in it: a function of
``__main__`` travels by value, so its bytes name ``__main__`` and
cloudpickle, and inside the pickle they would send every call's arguments
through cloudpickle here and the namespace-binding unpickler there, ten
times the C pickler's cost (``dumps``, ``_namespace.loads``).

A message whose flags have SHARED carries its large buffers in shared
memory: the part after the function's bytes starts with the table of
their places (``_shm``), and the pickle refers to them out of band. A
worker answers a shared reply's RELEASE, or its next task, by closing
that reply's memory.
"""

from __future__ import annotations

import pickle
import struct
import sys
import traceback
import types
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cloudpickle

from . import _cputime, _shm
from .errors import RemoteError, SerializationError, remote_traceback

# Message kinds, caller → worker.
CALL, CHUNK, EXIT, RELEASE = 1, 2, 3, 4
TASK_HEAD = struct.Struct("<BBq")
FN_LEN = struct.Struct("<I")  # CALL and CHUNK: the length of the function's bytes that follow
# Message kinds, worker → caller, and the flags of either direction.
READY, INIT_FAILED, DONE, LOG = 1, 2, 3, 4
RETIRING, SHARED = 1, 2
REPLY_HEAD = struct.Struct("<BBqdd")

OK = 0
ERR = 1  # value: a packed exception from another process
RAISED = 2  # value: an exception object of this process
CHUNK_DONE = 3  # value: a list of outcomes, one per item of a chunk

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_MAIN_MARK = b"__main__"

Outcome = tuple[int, Any]


def dumps(obj: object, out: _shm.Outgoing | _shm.Probe | None = None) -> bytes:
    """Pickle ``obj`` fast, by value where it has to be.

    The C pickler is ten times cheaper than cloudpickle on small messages, but
    it pickles functions and classes of ``__main__`` by reference, which a
    spawned worker cannot resolve; those (and lambdas, closures, anything the
    plain pickler refuses) go through cloudpickle. With ``out``, large
    buffers are left out of the pickle for shared memory (``_shm``).
    """
    callback = None if out is None else out.callback
    try:
        data: bytes | None = pickle.dumps(obj, _PROTOCOL, buffer_callback=callback)
    except _shm.OutOfBand:
        raise
    except Exception:
        data = None
    if data is not None and _MAIN_MARK not in data:
        return data
    if out is not None:
        out.reset()  # forget the buffers the first attempt recorded
    return cloudpickle.dumps(obj, _PROTOCOL, buffer_callback=callback)  # type: ignore[no-any-return]


loads = pickle.loads


# A message to a worker, and what its sender must keep until the task is
# settled: the shared memory it refers to.
Payload = tuple[bytes, tuple[Any, ...]]


def pack(obj: object) -> tuple[bytes, bool, Sequence[Any]]:
    """``obj`` pickled, its large buffers in shared memory: (body, whether
    it is shared, the segments to hold until the receiver mapped them).

    Most messages have no large buffer: they are pickled once, with nothing
    allocated for shared memory; one that has is pickled again for it.
    """
    if not _shm.ENABLED:
        return dumps(obj), False, ()
    try:
        data = dumps(obj, _shm.PROBE)
    except _shm.OutOfBand:
        obj = _shm.lift(obj)
    else:
        if len(data) < _shm.THRESHOLD:
            return data, False, ()
        lifted = _shm.lift(obj)  # large bytes, which pickle keeps in band
        if lifted is obj:
            return data, False, ()
        obj = lifted
    out = _shm.Outgoing()
    data = dumps(obj, out)
    if not out.places:
        return data, False, out.keep  # what concur.share() handles in it hold
    try:
        table = out.finish()
    except _shm.SharedMemoryError as exc:
        raise SerializationError(f"cannot send the data through shared memory: {exc}") from exc
    return table + data, True, out.keep


def unpack(
    body: memoryview, writable: bool, mappings: _shm.Mappings | None = None
) -> tuple[memoryview, list[memoryview] | None]:
    """A shared body's pickle and its buffers, mapped here; raises
    SerializationError when the sender's memory is gone."""
    try:
        return _shm.incoming(body, writable, mappings)
    except _shm.SharedMemoryError as exc:
        raise SerializationError(str(exc), what="result") from exc


Opened = tuple[int, int, memoryview, memoryview, list[memoryview] | None]


def open_message(data: bytes | bytearray) -> Opened:
    """A task message's (kind, task_id, function's bytes (empty if none),
    pickle, shared buffers or None); the worker's view: buffers map read-only."""
    kind, flags, task_id = TASK_HEAD.unpack_from(data)
    view = memoryview(data)
    start = TASK_HEAD.size
    fn = view[start:start]
    if kind in (CALL, CHUNK):
        (size,) = FN_LEN.unpack_from(data, start)
        start += FN_LEN.size
        fn = view[start : start + size]
        start += size
    body = view[start:]
    if not flags & SHARED:
        return kind, task_id, fn, body, None
    body, buffers = unpack(body, writable=False, mappings=_shm.worker_mappings)
    return kind, task_id, fn, body, buffers


def describe(fn: object) -> str:
    """A short name for a callable, for error messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    module = getattr(fn, "__module__", None)
    if name is None:
        return repr(fn)[:80]
    return f"{module}.{name}" if module else str(name)


def inherited_only(error: BaseException) -> bool:
    """True for multiprocessing's refusal to pickle a queue, lock or shared
    value outside a process start ("... only be shared between processes
    through inheritance")."""
    return isinstance(error, RuntimeError) and "through inheritance" in str(error)


def explain(
    error: BaseException, what: str, obj: object, index: int | None = None
) -> SerializationError:
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return SerializationError(
        f"cannot send the {what} {text} to a worker process: {type(error).__name__}: {error}. "
        "Pass picklable data (or use a ThreadPool, which shares memory).",
        what=what,
        index=index,
    )


def renumbered(error: BaseException, first: int) -> BaseException:
    """A chunk's error about its item ``index``, for a chunk that starts at
    item ``first`` of the input: the same error, counted from the input's start."""
    if not isinstance(error, SerializationError) or error.index is None or not first:
        return error
    index = error.index + first
    old, new = f"item {error.index} ", f"item {index} "
    found = type(error)(str(error).replace(old, new, 1), error.what.replace(old, new, 1), index)
    found.__cause__ = error.__cause__
    return found


def task_message(kind: int, task_id: int, body: bytes = b"") -> bytes:
    return TASK_HEAD.pack(kind, 0, task_id) + body


def _shared_message(kind: int, task_id: int, fn_blob: bytes, obj: object) -> Payload:
    body, shared, keep = pack(obj)
    head = TASK_HEAD.pack(kind, SHARED if shared else 0, task_id) + FN_LEN.pack(len(fn_blob))
    return b"".join((head, fn_blob, body)), tuple(keep)


# Functions pickled bigger are pickled per call, and kept by neither side.
KEEP_BLOB_BYTES = 1 << 20
_MISSING = object()
_SCALARS = (int, float, complex, str, bytes, bool, type(None))


class _Kept:
    """A function's bytes and what they were made from."""

    __slots__ = ("blob", "code", "defaults", "fn", "kwdefaults", "names", "values")

    def __init__(self, fn: types.FunctionType, names: tuple[str, ...], blob: bytes) -> None:
        key = id(fn)
        # Dropped with its function (a stale entry, its id reused, is never
        # taken for another function: ``fn`` is compared first).
        self.fn = weakref.ref(fn, lambda _: _blobs.pop(key, None))
        self.code, self.defaults, self.kwdefaults = fn.__code__, fn.__defaults__, fn.__kwdefaults__
        self.names = names
        self.values = _values(fn, names)
        self.blob = blob

    def still(self, fn: types.FunctionType) -> bool:
        """Whether ``fn`` would pickle to the same bytes: the same function,
        code and defaults, and every global it names bound to the same object."""
        if not (
            self.fn() is fn
            and fn.__code__ is self.code
            and fn.__defaults__ is self.defaults
            and fn.__kwdefaults__ is self.kwdefaults
        ):
            return False
        namespace = fn.__globals__
        for name, value in zip(self.names, self.values, strict=True):  # (a loop: once a call)
            if namespace.get(name, _MISSING) is not value:
                return False
        return True


# By id(fn): a plain dict's lookup costs a fraction of a WeakKeyDictionary's,
# which makes a weak reference per lookup.
_blobs: dict[int, _Kept] = {}


def _names(code: types.CodeType) -> tuple[str, ...]:
    """Every name the code (and code nested in it) may read as a global."""
    found = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found.extend(_names(const))
    return tuple(dict.fromkeys(found))


def _values(fn: types.FunctionType, names: tuple[str, ...]) -> tuple[Any, ...]:
    namespace = fn.__globals__
    return tuple(namespace.get(name, _MISSING) for name in names)


def _unchanging(value: Any) -> bool:
    """A value whose pickle cannot change while it stays the same object: an
    immutable scalar or tuple of them, a module, or a function or class the
    worker imports by name."""
    if value is _MISSING or isinstance(value, (*_SCALARS, types.ModuleType)):
        return True
    if isinstance(value, tuple):
        return all(_unchanging(item) for item in value)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        module = sys.modules.get(getattr(value, "__module__", None) or "")
        name = getattr(value, "__qualname__", "")
        return (
            module is not None
            and module.__name__ != "__main__"
            and getattr(module, name, None) is value
        )
    return False


def function_blob(fn: object) -> bytes | None:
    """``dumps(fn)``, made once and kept while ``fn`` lives, for a plain
    function whose pickle cannot change unseen: no closure, no attributes,
    and defaults and globals that are immutable scalars, modules or
    importable functions (checked, by identity, at each call). None for
    anything else, which is pickled with each call as before."""
    if type(fn) is not types.FunctionType or fn.__closure__ is not None or fn.__dict__:
        return None
    kept = _blobs.get(id(fn))
    if kept is not None and kept.still(fn):
        return kept.blob
    names = _names(fn.__code__)
    defaults = (*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values())
    if not all(_unchanging(v) for v in (*defaults, *_values(fn, names))):
        return None
    blob = dumps(fn)
    if len(blob) <= KEEP_BLOB_BYTES:
        _blobs[id(fn)] = _Kept(fn, names, blob)
    return blob


def serialize_call(
    task_id: int, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Payload:
    """The message for one call; raises SerializationError naming the culprit."""
    try:
        blob = function_blob(fn)
        if blob is None:
            return _shared_message(CALL, task_id, b"", (fn, args, kwargs))
        return _shared_message(CALL, task_id, blob, (args, kwargs))
    except SerializationError:
        raise
    except Exception as error:
        raise _culprit(error, fn, args, kwargs) from error


def serialize_chunk(task_id: int, fn_blob: bytes, items: list[tuple[Any, ...]]) -> Payload:
    try:
        return _shared_message(CHUNK, task_id, fn_blob, items)
    except SerializationError:
        raise
    except Exception as error:
        for index, args in enumerate(items):
            _check_item(index, args)
        raise explain(error, "arguments", items) from error


def _check_item(index: int, args: tuple[Any, ...]) -> None:
    """Raises SerializationError naming item ``index`` of a chunk (and which
    argument, when the item has several) if it cannot be pickled."""
    for position, arg in enumerate(args):
        try:
            dumps(arg)
        except Exception as inner:
            what = f"item {index}" if len(args) == 1 else f"argument {position} of item {index}"
            raise explain(inner, what, arg, index) from inner


def serialize_callable(fn: Callable[..., Any]) -> bytes:
    try:
        return dumps(fn)
    except Exception as error:
        raise explain(error, "callable", fn) from error


def _culprit(
    error: Exception, fn: object, args: Iterable[Any], kwargs: dict[str, Any]
) -> SerializationError:
    try:
        dumps(fn)
    except Exception as inner:
        return explain(inner, "callable", fn)
    try:
        _check_args(error, tuple(args), kwargs)
    except SerializationError as found:
        return found
    return explain(error, "call", fn)


def _check_args(error: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for index, arg in enumerate(args):
        try:
            dumps(arg)
        except Exception as inner:
            raise explain(inner, f"argument {index}", arg) from inner
    for key, value in kwargs.items():
        try:
            dumps(value)
        except Exception as inner:
            raise explain(inner, f"keyword argument {key!r}", value) from inner


# --- outcomes, packed in the worker and unpacked in the caller ---------------


def safe_str(obj: object) -> str:
    """``str(obj)``, or a note when its ``__str__`` itself raises."""
    try:
        return str(obj)
    except Exception as err:
        return f"<str() failed: {type(err).__name__}>"


# Marks a pickle of (class, args, state) for an exception that cannot be
# rebuilt the usual way (its __init__ takes other arguments than its args).
_REBUILD = "concur-rebuild-exception"


def pack_exception(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """(pickled exception or None, type name, message, formatted traceback)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc_type = type(exc)
    type_name = f"{exc_type.__module__}.{exc_type.__qualname__}"
    return _exception_blob(exc), type_name, safe_str(exc), tb


def _exception_blob(exc: BaseException) -> bytes | None:
    """The exception pickled so the caller can rebuild it as its own type.

    ``Exception.__reduce__`` rebuilds by calling the class with ``args``,
    which fails for a class whose ``__init__`` takes other arguments
    (``HTTPError(url, status)``); such an exception travels as its class,
    args and attributes, and is rebuilt without calling ``__init__``.
    """
    try:
        blob = dumps(exc)
        loads(blob)
        return blob
    except BaseException:
        pass
    for state in (dict(getattr(exc, "__dict__", {})), {}):
        try:
            return dumps((_REBUILD, type(exc), exc.args, state))
        except BaseException:
            continue
    return None


def unpack_exception(packed: tuple[bytes | None, str, str, str]) -> BaseException:
    """Rebuild a worker's exception with its traceback as ``__cause__``.

    Never raises: an exception whose unpickling fails here (its module is
    missing, or its ``__reduce__`` raises, even ``SystemExit``) arrives as a
    ``RemoteError`` that names the reason.
    """
    blob, type_name, message, tb = packed
    exc: BaseException | None = None
    why = "it could not be pickled in the worker"
    if blob is not None:
        try:
            exc = _rebuild(loads(blob))
        except KeyboardInterrupt:
            raise
        except BaseException as err:
            why = f"{type(err).__name__}: {safe_str(err)}"
    if exc is None:
        exc = RemoteError(type_name, message, tb, why)
    exc.__cause__ = remote_traceback(tb)
    return exc


def _rebuild(obj: Any) -> BaseException:
    if isinstance(obj, BaseException):
        return obj
    if not (isinstance(obj, tuple) and len(obj) == 4 and obj[0] == _REBUILD):
        raise TypeError(f"not an exception: {type(obj).__name__}")
    _, cls, args, state = obj
    exc: BaseException = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def outcome_error(outcome: Outcome) -> BaseException | None:
    """The exception a call's outcome holds (rebuilt if it came from another
    process), or None when the call returned."""
    status, value = outcome
    if status == OK:
        return None
    if status == RAISED:
        return value  # type: ignore[no-any-return]
    return unpack_exception(value)


def resolve(outcome: Outcome) -> Any:
    """Return the value of an outcome or raise its exception."""
    error = outcome_error(outcome)
    if error is not None:
        raise error
    return outcome[1]


def run_chunk(
    fn: Callable[..., Any], items: list[tuple[Any, ...]], pack: bool
) -> tuple[list[Outcome], float, float]:
    """Run ``fn(*args)`` for each item; one failure does not stop the rest.

    ``pack`` turns exceptions into picklable packs (for a worker process);
    otherwise they stay objects. Returns the outcomes, and the wall and CPU
    seconds they took (``spent``).
    """
    outcomes: list[Outcome] = []
    start = _cputime.clock()
    for args in items:
        try:
            outcomes.append((OK, fn(*args)))
        except BaseException as exc:
            outcomes.append((ERR, pack_exception(exc)) if pack else (RAISED, exc))
    return outcomes, *_cputime.spent(start)
