"""``concur bench-server``: concur's five server models against the stdlib's.

Every server does the same work (the uppercase line protocol) and runs in a
process of its own (``python -m concur.bench.servers NAME PORT``); the load
comes from this process, through ``concur.server.load``. Servers are
interleaved and each scenario repeated; the table shows the median with the
minimum and maximum.

Scenarios:

* ``messages``: C connections × M messages each (100 × 200 in a full run);
  messages/s and latency.
* ``sessions``: S short sessions (1,000), 4 at a time; sessions/s.
* ``idle``: N connections held open at once (10,000), then a fresh client
  must still get its answer; the memory of the server's process tree before
  and after, per connection.

The peers: ``socketserver.ThreadingTCPServer``, ``socketserver.ForkingTCPServer``
and an asyncio-streams server, all with a backlog of 1,024 like concur's.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

SERVERS = {
    "concur-thread": "concur thread",
    "concur-async": "concur async",
    "concur-process": "concur process",
    "concur-prefork": "concur prefork",
    "concur-hybrid": "concur hybrid",
    "socketserver-threading": "ThreadingTCPServer",
    "socketserver-forking": "ForkingTCPServer",
    "asyncio": "asyncio streams",
}
IDLE_SERVERS = ("concur-async", "concur-hybrid", "concur-thread", "asyncio")


@dataclass(frozen=True)
class Sizes:
    connections: int = 100
    messages: int = 200
    sessions: int = 1000
    idle: int = 10_000


FULL = Sizes()
QUICK = Sizes(connections=20, messages=50, sessions=200, idle=1000)


# -- the servers ----------------------------------------------------------------


class _UpperHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            text = line.decode().rstrip("\n")
            if text == "q":
                self.wfile.write(b"q\n")
                return
            self.wfile.write(text.upper().encode() + b"\n")


class _Threading(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


class _Forking(socketserver.ForkingTCPServer):
    allow_reuse_address = True
    request_queue_size = 1024
    max_children = 1000


async def _asyncio_server(port: int) -> None:
    async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                text = line.decode().rstrip("\n")
                if text == "q":
                    writer.write(b"q\n")
                    await writer.drain()
                    break
                writer.write(text.upper().encode() + b"\n")
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(upper, "127.0.0.1", port, backlog=1024)
    _say_ready()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def _say_ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def serve(name: str, port: int, workers: int) -> None:
    """Run server ``name`` on ``port`` until SIGTERM."""
    from ..server import raise_open_files_limit

    raise_open_files_limit()
    if name.startswith("concur-"):
        from ..server import serve as concur_serve

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        model = name.removeprefix("concur-")
        options: dict[str, Any] = {"max_connections": 100_000}
        if model in ("prefork", "hybrid"):
            options["workers"] = workers
        _say_ready_soon(port)
        concur_serve(grace=1.0, port=port, model=model, **options)
    elif name == "asyncio":
        asyncio.run(_asyncio_server(port))
    else:
        cls = _Threading if name == "socketserver-threading" else _Forking
        with cls(("127.0.0.1", port), _UpperHandler) as server:
            signal.signal(signal.SIGTERM, lambda *_: _shutdown_in_thread(server))
            _say_ready()
            server.serve_forever(poll_interval=0.1)


def _shutdown_in_thread(server: socketserver.BaseServer) -> None:
    import threading

    threading.Thread(target=server.shutdown).start()


def _say_ready_soon(port: int) -> None:
    """concur's serve() blocks: report readiness once the port answers."""
    import threading

    def wait() -> None:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                _say_ready()
                return
            except OSError:
                time.sleep(0.02)

    threading.Thread(target=wait, daemon=True).start()


# -- running a scenario -----------------------------------------------------------


@dataclass
class Measure:
    server: str
    scenario: str
    values: list[dict[str, Any]] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Running:
    """One benchmark server in a subprocess."""

    def __init__(self, name: str, workers: int) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "concur.bench.servers", name, str(self.port), str(workers)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"server {name} did not start")

    def rss(self) -> int:
        import psutil

        root = psutil.Process(self.proc.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # concur's master notices and takes its children along
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def measure_messages(server: Running, sizes: Sizes) -> dict[str, Any]:
    from ..server.load import run_load

    report = run_load(
        port=server.port, connections=sizes.connections, messages=sizes.messages, timeout=30
    )
    return report.as_dict()


def measure_sessions(server: Running, sizes: Sizes) -> dict[str, Any]:
    from ..server.load import run_load

    report = run_load(port=server.port, connections=4, sessions=sizes.sessions, timeout=30)
    return report.as_dict()


def measure_idle(server: Running, sizes: Sizes) -> dict[str, Any]:
    from ..server.load import run_load

    before = server.rss()
    held: list[socket.socket] = []
    errors = 0
    started = time.perf_counter()
    try:
        for _ in range(sizes.idle):
            try:
                held.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
            except OSError:
                errors += 1
        time.sleep(0.5)  # let the server accept the last ones
        opened = time.perf_counter() - started
        after = server.rss()
        check = run_load(port=server.port, connections=1, messages=10, timeout=10)
        # every held connection must still be served
        alive = 0
        for sock in held[:: max(1, len(held) // 20)]:
            sock.sendall(b"x\n")
            if sock.recv(16) == b"X\n":
                alive += 1
    finally:
        for sock in held:
            sock.close()
    probes = len(held[:: max(1, len(held) // 20)]) if held else 0
    return {
        "held": len(held),
        "connect_errors": errors,
        "seconds_to_open": round(opened, 3),
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "kb_per_connection": round((after - before) / max(len(held), 1) / 1024, 2),
        "fresh_client_errors": check.errors,
        "probes_answered": f"{alive}/{probes}",
    }


SCENARIOS = {
    "messages": measure_messages,
    "sessions": measure_sessions,
    "idle": measure_idle,
}


def run(
    sizes: Sizes,
    servers: list[str],
    scenarios: list[str],
    repeat: int,
    progress: Any = None,
) -> list[Measure]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results: dict[tuple[str, str], Measure] = {}
    for _ in range(repeat):
        for scenario in scenarios:
            for name in servers:
                if scenario == "idle" and name not in IDLE_SERVERS:
                    continue
                workers = min(sizes.connections, 128) if name == "concur-prefork" else 2
                if scenario == "sessions" and name == "concur-prefork":
                    workers = 4
                if progress is not None:
                    progress(f"{scenario} · {SERVERS[name]}")
                server = Running(name, workers)
                try:
                    value = SCENARIOS[scenario](server, sizes)
                except Exception as exc:  # a failing server is reported, not hidden
                    value = {"failed": f"{type(exc).__name__}: {exc}"}
                finally:
                    server.stop()
                results.setdefault((scenario, name), Measure(name, scenario)).values.append(value)
    return list(results.values())


def summarize(measures: list[Measure]) -> list[dict[str, Any]]:
    rows = []
    for m in measures:
        ok = [v for v in m.values if "failed" not in v]
        row: dict[str, Any] = {"scenario": m.scenario, "server": m.server, "runs": m.values}
        if not ok:
            row["failed"] = m.values[0].get("failed")
        elif m.scenario == "idle":
            row.update(ok[len(ok) // 2])
        else:
            key = "messages_per_s" if m.scenario == "messages" else "sessions_per_s"
            rates = [v[key] for v in ok]
            row.update(
                rate=statistics.median(rates),
                rate_min=min(rates),
                rate_max=max(rates),
                p50_ms=statistics.median(v["p50_ms"] for v in ok),
                p99_ms=statistics.median(v["p99_ms"] for v in ok),
                errors=sum(v["errors"] for v in ok),
            )
        rows.append(row)
    return rows


def print_tables(console: Any, rows: list[dict[str, Any]], sizes: Sizes) -> None:
    from rich.table import Table

    titles = {
        "messages": f"messages: {sizes.connections} connections × {sizes.messages} messages",
        "sessions": f"sessions: {sizes.sessions} short sessions, 4 at a time",
        "idle": f"idle: {sizes.idle:,} connections held open",
    }
    for scenario in ("messages", "sessions", "idle"):
        chosen = [r for r in rows if r["scenario"] == scenario]
        if not chosen:
            continue
        table = Table(title=titles[scenario], title_justify="left")
        table.add_column("server")
        if scenario == "idle":
            for column in ("held", "RSS before", "RSS after", "KB/conn", "fresh client"):
                table.add_column(column, justify="right")
            for r in chosen:
                if "failed" in r:
                    table.add_row(SERVERS[r["server"]], f"failed: {r['failed']}")
                    continue
                table.add_row(
                    SERVERS[r["server"]],
                    f"{r['held']:,}",
                    f"{r['rss_before_mb']} MB",
                    f"{r['rss_after_mb']} MB",
                    f"{r['kb_per_connection']}",
                    "ok" if r["fresh_client_errors"] == 0 else "failed",
                )
        else:
            unit = "messages/s" if scenario == "messages" else "sessions/s"
            best_peer = max(
                (
                    r["rate"]
                    for r in chosen
                    if not r["server"].startswith("concur-") and "rate" in r
                ),
                default=None,
            )
            for column in (unit, "min–max", "p50", "p99", "errors", "vs best peer"):
                table.add_column(column, justify="right")
            for r in chosen:
                if "failed" in r:
                    table.add_row(SERVERS[r["server"]], f"failed: {r['failed']}")
                    continue
                ratio = f"{r['rate'] / best_peer:.2f}×" if best_peer else "–"
                table.add_row(
                    SERVERS[r["server"]],
                    f"{r['rate']:,.0f}",
                    f"{r['rate_min']:,.0f}–{r['rate_max']:,.0f}",
                    f"{r['p50_ms']:.2f} ms",
                    f"{r['p99_ms']:.2f} ms",
                    str(r["errors"]),
                    ratio,
                )
        console.print(table)


def write_json(path: str, env: dict[str, Any], sizes: Sizes, rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as out:
        json.dump({"environment": env, "sizes": sizes.__dict__, "results": rows}, out, indent=2)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 2)
