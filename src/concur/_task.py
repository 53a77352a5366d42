"""Task records and what travels between the caller and a worker process.

A call is serialized once, in the caller, when it is submitted, so an
argument that cannot be pickled fails that one future at once and nothing
else. The bytes then go to whichever worker is free (and again to a fresh one
if the task is retried). Replies carry the outcome and the time the call took
(wall and CPU), which the chunk sizer and the supervisor use.

Wire format (each one ``Connection.send_bytes`` message, a pickle):

    caller → worker   (task_id, CALL,  fn, args, kwargs)
                      (task_id, CHUNK, fn_blob, [args, ...])
                      None                              → exit cleanly
    worker → caller   (task_id, outcome, wall_s, cpu_s)
                      outcome: (OK, value) | (ERR, packed exception)
                               | (CHUNK_DONE, [outcome, ...])
"""

from __future__ import annotations

import pickle
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from .errors import RemoteError, RemoteTraceback, SerializationError

CALL = 0
CHUNK = 1
OK = 0
ERR = 1  # value: a packed exception from another process
RAISED = 2  # value: an exception object of this process
CHUNK_DONE = 3  # value: a list of outcomes, one per item of a chunk

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_MAIN_MARK = b"__main__"

Outcome = tuple[int, Any]


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` fast, by value where it has to be.

    The C pickler is ten times cheaper than cloudpickle on small messages, but
    it pickles functions and classes of ``__main__`` by reference, which a
    spawned worker cannot resolve; those (and lambdas, closures, anything the
    plain pickler refuses) go through cloudpickle.
    """
    try:
        data = pickle.dumps(obj, _PROTOCOL)
    except Exception:
        return cloudpickle.dumps(obj, _PROTOCOL)  # type: ignore[no-any-return]
    if _MAIN_MARK in data:
        return cloudpickle.dumps(obj, _PROTOCOL)  # type: ignore[no-any-return]
    return data


loads = pickle.loads


def describe(fn: object) -> str:
    """A short name for a callable, for error messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    module = getattr(fn, "__module__", None)
    if name is None:
        return repr(fn)[:80]
    return f"{module}.{name}" if module else str(name)


def _explain(error: BaseException, what: str, obj: object) -> SerializationError:
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return SerializationError(
        f"cannot send the {what} {text} to a worker process: {type(error).__name__}: {error}. "
        "Pass picklable data (or use a ThreadPool, which shares memory).",
        what=what,
    )


def serialize_call(
    task_id: int, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """The message for one call; raises SerializationError naming the culprit."""
    try:
        return dumps((task_id, CALL, fn, args, kwargs))
    except Exception as error:
        raise _culprit(error, fn, args, kwargs) from error


def serialize_chunk(task_id: int, fn_blob: bytes, items: list[tuple[Any, ...]]) -> bytes:
    try:
        return dumps((task_id, CHUNK, fn_blob, items))
    except Exception as error:
        for args in items:
            _check_args(error, args, {})
        raise _explain(error, "arguments", items) from error


def serialize_callable(fn: Callable[..., Any]) -> bytes:
    try:
        return dumps(fn)
    except Exception as error:
        raise _explain(error, "callable", fn) from error


def _culprit(
    error: Exception, fn: object, args: Iterable[Any], kwargs: dict[str, Any]
) -> SerializationError:
    try:
        dumps(fn)
    except Exception as inner:
        return _explain(inner, "callable", fn)
    try:
        _check_args(error, tuple(args), kwargs)
    except SerializationError as found:
        return found
    return _explain(error, "call", fn)


def _check_args(error: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for index, arg in enumerate(args):
        try:
            dumps(arg)
        except Exception as inner:
            raise _explain(inner, f"argument {index}", arg) from inner
    for key, value in kwargs.items():
        try:
            dumps(value)
        except Exception as inner:
            raise _explain(inner, f"keyword argument {key!r}", value) from inner


# --- outcomes, packed in the worker and unpacked in the caller ---------------


def pack_exception(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """(pickled exception or None, type name, message, formatted traceback)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc_type = type(exc)
    type_name = f"{exc_type.__module__}.{exc_type.__qualname__}"
    try:
        blob: bytes | None = dumps(exc)
    except Exception:
        blob = None
    return blob, type_name, str(exc), tb


def unpack_exception(packed: tuple[bytes | None, str, str, str]) -> BaseException:
    """Rebuild a worker's exception with its traceback as ``__cause__``."""
    blob, type_name, message, tb = packed
    exc: BaseException
    if blob is None:
        exc = RemoteError(type_name, message, tb)
    else:
        try:
            exc = loads(blob)
        except Exception:
            exc = RemoteError(type_name, message, tb)
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def pack_result(value: object) -> bytes:
    """Pickle a reply; a result that cannot be pickled becomes an error reply."""
    return dumps(value)


def resolve(outcome: Outcome) -> Any:
    """Return the value of an outcome or raise its exception."""
    status, value = outcome
    if status == OK:
        return value
    if status == RAISED:
        raise value
    raise unpack_exception(value)


def run_chunk(
    fn: Callable[..., Any], items: list[tuple[Any, ...]], pack: bool
) -> tuple[list[Outcome], float, float]:
    """Run ``fn(*args)`` for each item; one failure does not stop the rest.

    ``pack`` turns exceptions into picklable packs (for a worker process);
    otherwise they stay objects. Returns the outcomes, wall and CPU seconds.
    """
    outcomes: list[Outcome] = []
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    for args in items:
        try:
            outcomes.append((OK, fn(*args)))
        except BaseException as exc:
            outcomes.append((ERR, pack_exception(exc)) if pack else (RAISED, exc))
    return outcomes, time.perf_counter() - wall0, time.thread_time() - cpu0
