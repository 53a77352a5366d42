"""Memory per idle connection of the server models, for docs/server.md.

    .venv/bin/python tools/server_memory.py [--connections 200] [--models process thread async]

For each model: start the server in this process (its master and children
for the process models), open N connections that each exchange one
message and then stay silent, and measure the server's process tree with
psutil before and after: the growth of USS (memory no other process
shares: what the connections cost for certain), of PSS (shared pages
split between their users) and of RSS (what ``top`` shows, counting
shared pages once per process), each divided by N. The calling process
is part of the tree for the thread and async models, which run in it.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import psutil

from concur.server import start


def tree_memory(root: int) -> dict[str, int]:
    totals = {"uss": 0, "pss": 0, "rss": 0}
    parent = psutil.Process(root)
    for proc in [parent, *parent.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        for key in totals:
            totals[key] += getattr(info, key)
    return totals


def measure(model: str, connections: int) -> dict[str, float]:
    options = {"workers": 1} if model in ("process", "prefork", "hybrid") else {}
    if model == "prefork":
        options["workers"] = connections
    with start(port=0, model=model, max_connections=connections + 10, **options) as server:
        root = getattr(server, "pid", os.getpid())
        time.sleep(0.5)
        before = tree_memory(root)
        held = []
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"hello\n")
            assert sock.recv(64) == b"HELLO\n"
            held.append(sock)
        time.sleep(0.5)
        after = tree_memory(root)
        for sock in held:
            sock.close()
    return {key: (after[key] - before[key]) / connections for key in before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=["process", "thread", "async"])
    args = parser.parse_args()
    print(f"{args.connections} idle connections; {os.cpu_count()} CPUs")
    print(f"{'model':<10}{'USS':>12}{'PSS':>12}{'RSS':>12}   per connection")
    for model in args.models:
        per = measure(model, args.connections)
        cells = "".join(f"{per[key] / 1024:>9,.0f} KB" for key in ("uss", "pss", "rss"))
        print(f"{model:<10}{cells}")


if __name__ == "__main__":
    main()
