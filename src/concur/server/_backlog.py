"""Clients waiting for a process, in the process and prefork models.

Those models serve one connection per process. When every process is busy,
a new client waits in the listening socket's backlog, as with any prefork
server, until a process is free to accept it; the master watches that queue
(``Backlog.watch``, on each turn of its loop while clients wait):

    arrivals    the queue's length (``TCP_INFO`` on Linux; elsewhere, whether
                the socket is readable) beyond the clients already counted,
                each stamped with the time the master first saw it
    departures  a child that accepts (its SERVING record) takes the oldest
    too long    a client that has waited ``timeout`` seconds gets the busy
                reply: the master accepts it to say so
    idle        meanwhile the connection silent longest, if silent for
                ``IDLE_GIVES_WAY`` seconds or more, is asked to give way
                (SIGUSR1): its child closes it and takes a waiting client

So a handful of clients that connect and say nothing cannot hold every
process while others are turned away. Children mark in a shared page since
when their connection has been silent (``mark``): 0.0 while a message is
handled and when there is no connection.
"""

from __future__ import annotations

import collections
import mmap
import os
import select
import signal
import socket
import struct
import time

from ._drive import refuse

IDLE_GIVES_WAY = 1.0  # seconds of silence after which a connection yields to a waiting client
POLL = 0.05  # how often the master looks at the queue while clients wait
_SILENT = struct.Struct("d")


class Backlog:
    def __init__(self, listener: socket.socket, timeout: float, slots: int) -> None:
        self.listener = listener
        self.timeout = timeout
        self.arrived: collections.deque[float] = collections.deque()
        # shared with the children; the kernel gives it pages only as slots are used
        self.page = mmap.mmap(-1, _SILENT.size * max(slots, 1))
        self.free: list[int] = []  # slots released, reused first
        self.unused = 0  # slots from here on were never used
        self.pids: dict[int, int] = {}  # slot -> the pid of the child that holds it
        self.asked: dict[int, float] = {}  # pid -> when it was asked to give way

    # -- slots: one per child, for its connection's silence ---------------------

    def claim(self) -> int:
        """A slot for the next child (before the fork: the child needs it)."""
        if self.free:
            return self.free.pop()
        self.unused += 1
        return self.unused - 1

    def hold(self, slot: int, pid: int) -> None:
        self.pids[slot] = pid

    def release(self, pid: int) -> None:
        for slot, holder in list(self.pids.items()):
            if holder == pid:
                del self.pids[slot]
                self.mark(slot, False)
                self.free.append(slot)
        self.asked.pop(pid, None)

    def mark(self, slot: int, silent: bool) -> None:
        """In a child: its connection is silent from now (or is not)."""
        _SILENT.pack_into(self.page, _SILENT.size * slot, time.monotonic() if silent else 0.0)

    def silent_for(self, slot: int) -> float:
        since: float = _SILENT.unpack_from(self.page, _SILENT.size * slot)[0]
        return time.monotonic() - since if since else 0.0

    # -- the queue ------------------------------------------------------------

    def waiting(self) -> bool:
        return bool(self.arrived)

    def taken(self) -> None:
        """A child accepted a connection: the oldest waiting one."""
        if self.arrived:
            self.arrived.popleft()

    def done(self, pid: int) -> None:
        """A child's connection ended: if it was asked to give way, it has."""
        self.asked.pop(pid, None)

    def queued(self) -> int:
        try:  # Linux: for a listening socket, tcpi_unacked is the accept queue's length
            info = self.listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
            return int(struct.unpack_from("I", info, 24)[0])
        except (OSError, AttributeError, struct.error):
            readable, _, _ = select.select([self.listener], [], [], 0)
            return len(readable)

    def watch(self, free_workers: int) -> OSError | None:
        """Count arrivals, refuse who waited too long, ask an idle connection
        to give way; an accept's error (out of file descriptors) is returned."""
        now = time.monotonic()
        queued = self.queued()
        if not queued:
            self.arrived.clear()
            return None
        self.arrived.extend([now] * (queued - len(self.arrived)))
        while self.arrived and now - self.arrived[0] >= self.timeout:
            self.arrived.popleft()
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                continue  # a child took it first
            except OSError as exc:
                return exc
            conn.setblocking(True)
            refuse(conn)
        if self.arrived and not free_workers:
            self.ask_to_give_way(now)
        return None

    def ask_to_give_way(self, now: float) -> None:
        """Ask the child whose connection has been silent longest (and long
        enough) to close it; one at a time, each asked once."""
        self.asked = {pid: at for pid, at in self.asked.items() if now - at < 1.0}
        if self.asked:
            return  # one is closing its connection; the next turn looks again
        best, longest = None, IDLE_GIVES_WAY
        for slot, pid in self.pids.items():
            silent = self.silent_for(slot)
            if silent >= longest:
                best, longest = pid, silent
        if best is not None:
            self.asked[best] = now
            try:
                os.kill(best, signal.SIGUSR1)
            except ProcessLookupError:
                pass
