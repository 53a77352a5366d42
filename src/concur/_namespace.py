"""One module namespace per worker for functions that travel by value.

Functions, lambdas and classes defined in ``__main__`` (or in any module the
worker cannot import) are pickled by value with cloudpickle, globals and all.
Left alone, cloudpickle gives each message's functions a fresh copy of their
globals, so state an initializer sets (``global MODEL; MODEL = load()``)
would vanish for the next task. The standard library pickles them by
reference and the worker resolves them in its own ``__main__``, so tasks and
initializers share one namespace there.

``loads`` here does the same for by-value functions: a function whose
globals belong to module ``M`` is bound to the worker's one namespace for
``M`` (for ``__main__``, the worker's own ``__main__`` module when that is
the caller's script, as in a forked worker), and the
globals it brings along only fill in names that namespace does not have yet,
so nothing a task or an initializer set is overwritten by the caller's copy.

Only the worker uses this; the caller unpickles replies with plain pickle.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from typing import Any

from cloudpickle import cloudpickle as _cloudpickle_impl

from ._task import KEEP_BLOB_BYTES

_namespaces: dict[str, dict[str, Any]] = {}


def namespace(module_name: str | None, file: str | None = None) -> dict[str, Any] | None:
    """This process's shared globals for functions of ``module_name``.

    For ``__main__`` that is the worker's own ``__main__`` module when it is
    the caller's script (a forked worker), and a namespace of its own
    otherwise: a spawned or fork-server worker's ``__main__`` is
    multiprocessing's bootstrap, whose names (``main``, ``spawn_main``)
    must not stand in for the script's.
    """
    if module_name is None:
        return None
    found = _namespaces.get(module_name)
    if found is None:
        main = sys.modules.get("__main__") if module_name == "__main__" else None
        if main is not None and file is not None and getattr(main, "__file__", None) == file:
            found = main.__dict__
        else:
            found = {"__name__": module_name}
        _namespaces[module_name] = found
    return found


def _make_function(
    code: types.CodeType,
    globals_: dict[str, Any],
    name: str,
    argdefs: tuple[Any, ...] | None,
    closure: tuple[Any, ...] | None,
) -> types.FunctionType:
    shared = namespace(globals_.get("__name__"), globals_.get("__file__"))
    if shared is None:
        shared = globals_
    else:
        for key, value in globals_.items():
            shared.setdefault(key, value)
    shared["__builtins__"] = __builtins__
    return types.FunctionType(code, shared, name, argdefs, closure)


def _function_setstate(
    obj: types.FunctionType, state: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    """cloudpickle's own set-up, minus overwriting names the namespace has."""
    _, slotstate = state
    existing = obj.__globals__
    brought = slotstate.get("__globals__", {})
    slotstate["__globals__"] = {k: v for k, v in brought.items() if k not in existing}
    _cloudpickle_impl._function_setstate(obj, state)


_OVERRIDES = {"_make_function": _make_function, "_function_setstate": _function_setstate}
_CLOUDPICKLE_MODULES = {"cloudpickle", "cloudpickle.cloudpickle", "cloudpickle.cloudpickle_fast"}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _CLOUDPICKLE_MODULES and name in _OVERRIDES:
            return _OVERRIDES[name]
        return super().find_class(module, name)


def loads(data: bytes | memoryview, buffers: list[memoryview] | None = None) -> Any:
    """``pickle.loads`` that binds by-value functions to the shared namespaces.

    A pickle that names nothing of cloudpickle's has nothing to bind and
    is loaded by the plain C unpickler, several times cheaper than one
    with a ``find_class`` of Python's.
    """
    if not _names_cloudpickle(data):
        return pickle.loads(data, buffers=buffers)
    return _Unpickler(io.BytesIO(data), buffers=buffers).load()


_SCAN_BELOW = 1 << 16  # bytes: a larger pickle goes to _Unpickler unscanned


def _names_cloudpickle(data: bytes | memoryview) -> bool:
    """Whether the pickle may refer to cloudpickle (its module name is in
    it: a pickle names a module in full before it can refer to it)."""
    if isinstance(data, memoryview):
        if data.nbytes >= _SCAN_BELOW:
            return True
        data = data.tobytes()  # (``in`` on a memoryview compares items, not bytes)
    return b"cloudpickle" in data


class _Functions:
    """The functions this process loaded, by the bytes they came as: the
    caller sends a plain function's bytes unchanged with every call
    (``_task.function_blob``), so it is loaded once, not per call."""

    LIMIT = 64

    def __init__(self) -> None:
        self.loaded: dict[bytes, Any] = {}

    def get(self, blob: bytes) -> Any:
        fn = self.loaded.get(blob)
        if fn is None:
            fn = loads(blob)
            if len(blob) <= KEEP_BLOB_BYTES:  # as the caller keeps them
                if len(self.loaded) >= self.LIMIT:
                    del self.loaded[next(iter(self.loaded))]  # the oldest
                self.loaded[blob] = fn
        return fn


_functions = _Functions()


def load_call(
    fn_blob: memoryview, data: bytes | memoryview, buffers: list[memoryview] | None = None
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """A CALL message's ``(fn, args, kwargs)``, its function loaded once per
    blob (``fn_blob``; empty when the function is in the pickle)."""
    if not fn_blob:
        fn, args, kwargs = loads(data, buffers)
        return fn, args, kwargs
    args, kwargs = loads(data, buffers)
    return _functions.get(fn_blob.tobytes()), args, kwargs
