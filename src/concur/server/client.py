"""``concur client``: talk to a line-oriented server from the terminal."""

from __future__ import annotations

import socket
import sys
from typing import TextIO


class ServerGone(ConnectionError):
    """The server closed the connection, or could not be reached."""


def talk(host: str, port: int, lines: TextIO, out: TextIO, timeout: float = 30.0) -> None:
    """Send each line; print each reply. ``q`` ends the session."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ServerGone(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
    with sock, sock.makefile("rwb") as stream:
        interactive = lines.isatty()
        while True:
            if interactive:
                out.write("> ")
                out.flush()
            line = lines.readline()
            if not line:
                return
            text = line.rstrip("\n")
            try:
                stream.write(text.encode() + b"\n")
                stream.flush()
                reply = stream.readline()
            except OSError as exc:
                raise ServerGone(f"the server at {host}:{port} went away: {exc}") from None
            if not reply:
                raise ServerGone(f"the server at {host}:{port} closed the connection")
            out.write(reply.decode(errors="replace"))
            out.flush()
            if text == "q":
                return


def main(host: str, port: int) -> int:
    try:
        talk(host, port, sys.stdin, sys.stdout)
    except ServerGone as exc:
        sys.stderr.write(f"concur client: {exc}\n")
        return 1
    return 0
