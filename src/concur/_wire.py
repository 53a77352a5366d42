"""Framed messages on a process pool's pipes, in as few system calls as can be.

A frame is the one ``multiprocessing.Connection`` writes: the length as a
4-byte big-endian signed integer (-1, then 8 bytes, for 2 GiB and more),
then the bytes. The pools read and write their workers' pipes here instead
of through ``Connection``, whose layers of Python cost a few microseconds a
message on each side, a good part of a warm round trip:

    send   the length, a header and a body: joined and written in one call
           when small (a frame of up to PIPE_BUF, 4 KiB, lands whole), or
           written with ``writev``, no copy of the body
    recv   the length, then the frame: one read when the pipe holds it all,
           else filled in place (``readv`` into one buffer, no copies)

A peer's end of file, before or within a frame, raises EOFError; other
failures raise OSError. The descriptors stay owned by their Connections,
which close them.
"""

from __future__ import annotations

import os
import struct

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_LONGEST_SHORT = 0x7FFFFFFF
_JOIN_BELOW = 1 << 16  # bytes: a smaller frame is joined and written in one call
_READ_WHOLE_BELOW = 1 << 20  # bytes: a larger body is read into one buffer in place


def send(fd: int, head: bytes, body: bytes = b"") -> None:
    """Write one frame of ``head + body``."""
    size = len(head) + len(body)
    length = _SHORT.pack(size) if size < _LONGEST_SHORT else _SHORT.pack(-1) + _LONG.pack(size)
    if size < _JOIN_BELOW:
        _write_all(fd, length + head + body)
        return
    first = length + head
    written = os.writev(fd, (first, body))
    if written < len(first):
        _write_all(fd, memoryview(first)[written:])
        written = len(first)
    _write_all(fd, memoryview(body)[written - len(first) :])


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = None
    while data:
        written = os.write(fd, data)
        if written == len(data):
            return
        view = memoryview(data) if view is None else view
        view = view[written:]
        data = view


def recv(fd: int) -> bytes | bytearray:
    """Read one frame; its bytes."""
    size = _SHORT.unpack(_exactly(fd, 4))[0]
    if size == -1:
        size = _LONG.unpack(_exactly(fd, 8))[0]
    if size == 0:
        return b""
    if size >= _READ_WHOLE_BELOW:
        return _fill(fd, bytearray(size), 0)
    data = os.read(fd, size)
    if len(data) == size:
        return data
    if not data:
        raise EOFError("end of file within a message")
    buffer = bytearray(size)
    buffer[: len(data)] = data
    return _fill(fd, buffer, len(data))


def _exactly(fd: int, size: int) -> bytes:
    data = os.read(fd, size)
    if len(data) == size:
        return data
    if not data:
        raise EOFError
    return bytes(_fill(fd, bytearray(data) + bytearray(size - len(data)), len(data)))


def _fill(fd: int, buffer: bytearray, start: int) -> bytearray:
    view = memoryview(buffer)
    done = start
    while done < len(buffer):
        got = os.readv(fd, (view[done:],))
        if got == 0:
            raise EOFError("end of file within a message")
        done += got
    return buffer
