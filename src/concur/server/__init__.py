"""concur.server: a TCP server whose concurrency model is a choice.

Start with ``start(...)`` (returns a running ``Server``) or ``serve(...)``
(blocks until SIGINT or SIGTERM). Models: ``thread`` (a thread per
connection), ``async`` (asyncio), ``process`` (a process per connection),
``prefork`` (N processes accepting on one socket) and ``hybrid`` (N
processes, each an event loop with threads for handlers that block). The
default session is the seed's uppercase service; pass ``handler=`` a
``Session`` subclass for your own. ``run_load`` drives and checks a server.
"""

from typing import TYPE_CHECKING, Any

# Loaded on first use (PEP 562), so that the process model's master, which
# runs ``python -m concur.server._master``, imports only what it needs.
_WHERE = {
    "LoadReport": ".load",
    "run_load": ".load",
    "DEFAULT_MODEL": ".models",
    "MODELS": ".models",
    "Server": ".models",
    "raise_open_files_limit": ".models",
    "serve": ".models",
    "start": ".models",
    "Reply": ".protocol",
    "Session": ".protocol",
    "TextSession": ".protocol",
    "UppercaseSession": ".protocol",
}

if TYPE_CHECKING:
    from .load import LoadReport, run_load
    from .models import DEFAULT_MODEL, MODELS, Server, raise_open_files_limit, serve, start
    from .protocol import Reply, Session, TextSession, UppercaseSession


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'concur.server' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "LoadReport",
    "Reply",
    "Server",
    "Session",
    "TextSession",
    "UppercaseSession",
    "raise_open_files_limit",
    "run_load",
    "serve",
    "start",
]
