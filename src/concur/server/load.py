"""``concur load``: drive a line-oriented uppercase server and check every reply.

Two shapes of load:

* ``connections`` × ``messages``: that many clients at once, each sending
  its messages one after another (a reply before the next message), then
  ``q``. This measures messages/s and per-message latency.
* ``sessions``: that many short sessions (connect, one message, ``q``,
  close), ``connections`` of them at a time. This measures sessions/s, the
  figure where a process per connection pays for its fork.

Every reply is checked against the uppercased message; a wrong reply, a
"busy" refusal, a reset or a timeout counts as an error (the first few are
kept as samples). The generator is one asyncio loop, so it adds little CPU of
its own to the machine it measures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class LoadReport:
    mode: str
    connections: int
    sessions: int = 0
    messages: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    samples: list[str] = field(default_factory=list)

    @property
    def sessions_per_s(self) -> float:
        return self.sessions / self.seconds if self.seconds else 0.0

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(p) - 1]

    def as_dict(self) -> dict[str, float | int | str | list[str]]:
        return {
            "mode": self.mode,
            "connections": self.connections,
            "sessions": self.sessions,
            "messages": self.messages,
            "errors": self.errors,
            "seconds": round(self.seconds, 4),
            "sessions_per_s": round(self.sessions_per_s, 1),
            "messages_per_s": round(self.messages_per_s, 1),
            "p50_ms": round(self.percentile(50) * 1e3, 3),
            "p99_ms": round(self.percentile(99) * 1e3, 3),
            "error_samples": self.samples,
        }

    def summary(self) -> str:
        return (
            f"{self.sessions} sessions, {self.messages} messages in {self.seconds:.2f} s: "
            f"{self.sessions_per_s:,.0f} sessions/s, {self.messages_per_s:,.0f} messages/s, "
            f"latency p50 {self.percentile(50) * 1e3:.3f} ms, "
            f"p99 {self.percentile(99) * 1e3:.3f} ms, {self.errors} errors"
        )


class _Load:
    def __init__(self, host: str, port: int, timeout: float, report: LoadReport) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.report = report

    def error(self, what: str) -> None:
        self.report.errors += 1
        if len(self.report.samples) < 5:
            self.report.samples.append(what)

    async def exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: str
    ) -> bool:
        started = time.perf_counter()
        writer.write(text.encode() + b"\n")
        line = await asyncio.wait_for(reader.readline(), self.timeout)
        expected = (text.upper() if text != "q" else "q").encode() + b"\n"
        if line != expected:
            self.error(f"sent {text!r}, got {line[:60]!r}")
            return False
        self.report.latencies.append(time.perf_counter() - started)
        if text != "q":
            self.report.messages += 1
        return True

    async def session(self, tag: str, messages: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            self.error(f"connect: {exc!r}")
            return
        try:
            for i in range(messages):
                if not await self.exchange(reader, writer, f"{tag} message {i} straße"):
                    return
            if await self.exchange(reader, writer, "q"):
                self.report.sessions += 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            self.error(f"{tag}: {exc!r}")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


async def _run(
    host: str, port: int, connections: int, messages: int, sessions: int, timeout: float
) -> LoadReport:
    mode = "sessions" if sessions else "connections"
    report = LoadReport(mode, connections)
    load = _Load(host, port, timeout, report)
    started = time.perf_counter()
    if sessions:
        queue = iter(range(sessions))

        async def client() -> None:
            for number in queue:
                await load.session(f"s{number}", 1)

        await asyncio.gather(*(client() for _ in range(min(connections, sessions))))
    else:
        await asyncio.gather(*(load.session(f"c{c}", messages) for c in range(connections)))
    report.seconds = time.perf_counter() - started
    return report


def run_load(
    host: str = "127.0.0.1",
    port: int = 8080,
    connections: int = 10,
    messages: int = 100,
    sessions: int = 0,
    timeout: float = 10.0,
) -> LoadReport:
    """Run one load and return its report (see the module docstring)."""
    if connections < 1:
        raise ValueError("connections must be >= 1")
    if messages < 0 or sessions < 0:
        raise ValueError("messages and sessions must be >= 0")
    return asyncio.run(_run(host, port, connections, messages, sessions, timeout))
