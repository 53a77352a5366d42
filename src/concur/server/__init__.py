"""concur.server: a TCP server whose concurrency model is a choice.

Start with ``start(...)`` (returns a running ``Server``) or ``serve(...)``
(blocks until SIGINT or SIGTERM). Models: ``thread`` (a thread per
connection), ``async`` (asyncio), ``process`` (a process per connection),
``prefork`` (N processes accepting on one socket) and ``hybrid`` (N
processes, each an event loop with threads for handlers that block). The
default session is the seed's uppercase service; pass ``handler=`` a
``Session`` subclass for your own. ``run_load`` drives and checks a server.
"""

from .load import LoadReport, run_load
from .models import DEFAULT_MODEL, MODELS, Server, raise_open_files_limit, serve, start
from .protocol import Reply, Session, TextSession, UppercaseSession

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
