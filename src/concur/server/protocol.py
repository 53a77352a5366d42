"""What a connection says: the Session API, and the built-in uppercase service.

The server reads whatever bytes arrive and hands them to the connection's
``Session`` (``feed``); the session returns the bytes to send back and
whether to close. A session is one object per connection, so it keeps its
own state in attributes (a counter, a buffer, a login) and never shares it.

``TextSession`` does the framing once for text protocols, so a subclass only
writes ``on_message(text) -> reply``:

* bytes are decoded as UTF-8 incrementally, so a character split across two
  TCP segments is not broken;
* input with newlines is line-oriented (``nc``, telnet): one reply per line,
  newline-terminated, lines longer than ``max_message`` refused;
* input without newlines is one message per read, the way the seed's client
  talks (it sends text and reads one reply of up to 1,024 bytes);
* bytes that are not UTF-8 get an error reply; the connection goes on.

``UppercaseSession`` is the seed's service: the reply is the message
uppercased (Unicode-aware: "straße" → "STRASSE"); a message that is exactly
``q`` gets ``q`` back and ends the session.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_MESSAGE = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """What to send back (may be empty) and whether to close afterwards."""

    data: bytes = b""
    close: bool = False


class Session:
    """One connection's handler. Subclass and override ``feed``."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.messages = 0

    def feed(self, data: bytes) -> Reply:
        raise NotImplementedError

    def end(self) -> None:
        """The connection is over (by either side). Release what you hold."""


class TextSession(Session):
    """A Session for text protocols; override ``on_message``."""

    max_message = DEFAULT_MAX_MESSAGE

    def __init__(self, peer: str) -> None:
        super().__init__(peer)
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._lines = False

    def on_message(self, text: str) -> tuple[str, bool]:
        """The reply to one message, and whether to close after sending it."""
        raise NotImplementedError

    def feed(self, data: bytes) -> Reply:
        try:
            self._buffer += self._decoder.decode(data)
        except UnicodeDecodeError:
            self._decoder.reset()
            self._buffer = ""
            end = "\n" if self._lines or b"\n" in data else ""
            return Reply(f"error: that was not UTF-8 text; send UTF-8{end}".encode())
        if "\n" in self._buffer:
            self._lines = True
        out: list[str] = []
        if self._lines:
            while "\n" in self._buffer:
                line, self._buffer = self._buffer.split("\n", 1)
                if len(line) > self.max_message:
                    return self._too_long(out)
                reply, close = self._answer(line.removesuffix("\r"))
                out.append(reply + "\n")
                if close:
                    return Reply("".join(out).encode(), close=True)
            if len(self._buffer) > self.max_message:
                return self._too_long(out)
            return Reply("".join(out).encode())
        if not self._buffer:
            return Reply()  # only part of a character so far
        message, self._buffer = self._buffer, ""
        reply, close = self._answer(message)
        return Reply(reply.encode(), close)

    def _too_long(self, out: list[str]) -> Reply:
        self._buffer = ""
        out.append(f"error: a line longer than {self.max_message} characters\n")
        return Reply("".join(out).encode(), close=True)

    def _answer(self, message: str) -> tuple[str, bool]:
        self.messages += 1
        return self.on_message(message)


class UppercaseSession(TextSession):
    """The seed's service: every message back in upper case; ``q`` ends it."""

    def on_message(self, text: str) -> tuple[str, bool]:
        if text == "q":
            return "q", True
        return text.upper(), False


class MaxMessage:
    """Wrap a handler so its TextSessions refuse lines over ``limit`` characters."""

    def __init__(self, handler: Callable[[str], Session], limit: int) -> None:
        self.handler = handler
        self.limit = limit

    def __call__(self, peer: str) -> Session:
        session = self.handler(peer)
        if isinstance(session, TextSession):
            session.max_message = self.limit
        return session
