"""A local HTTP server that can take only a few connections at once.

Five threads each accept from one listening socket with a backlog of five
and answer after 20 ms, as a small service behind a fixed worker pool does:
a client that opens more connections than it can serve sees the excess
wait in the backlog, and beyond it its SYNs dropped (retransmitted after
a second). It runs in its own process, so its threads do not share the
benchmark's GIL. ``python -m concur.bench.capacity`` prints its port.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

WORKERS = 5
BACKLOG = 5
DELAY_S = 0.02
_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def _serve_one(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                time.sleep(DELAY_S)
                conn.sendall(_REPLY)


def main() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(BACKLOG)
    for _ in range(WORKERS):
        threading.Thread(target=_serve_one, args=(listener,), daemon=True).start()
    sys.stdout.write(f"{listener.getsockname()[1]}\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the benchmark closes our stdin (or dies)


@contextlib.contextmanager
def running() -> Iterator[str]:
    """Start the server in a subprocess; yield its URL; stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "concur.bench.capacity"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.kill()
        proc.wait(10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


if __name__ == "__main__":
    main()
