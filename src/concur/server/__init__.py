"""concur.server: a TCP server whose concurrency model is a choice.

Start with ``start(...)`` (returns a running ``Server``) or ``serve(...)``
(blocks until SIGINT or SIGTERM). Models so far: ``thread`` (a thread per
connection) and ``async`` (asyncio). The default session is the seed's
uppercase service; pass ``handler=`` a ``Session`` subclass for your own.
"""

from .models import MODELS, Server, serve, start
from .protocol import Reply, Session, TextSession, UppercaseSession

__all__ = [
    "MODELS",
    "Reply",
    "Server",
    "Session",
    "TextSession",
    "UppercaseSession",
    "serve",
    "start",
]
