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


class _Client(asyncio.Protocol):
    """One session as a protocol: send a message, check its reply, send the next.

    Callbacks rather than streams keep the generator's own cost per message
    low, so that it measures the server and not itself.
    """

    def __init__(self, load: _Load, tag: str, messages: int) -> None:
        self.load = load
        self.texts = [f"{tag} message {i} straße" for i in range(messages)] + ["q"]
        self.expected = [t.upper().encode() + b"\n" for t in self.texts[:-1]] + [b"q\n"]
        self.index = 0
        self.buffer = b""
        self.sent_at = 0.0
        self.failed = False  # one error per session, however it then ends
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.texts[self.index].encode() + b"\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            line += b"\n"
            report = self.load.report
            if line != self.expected[self.index]:
                self.load.error(f"sent {self.texts[self.index]!r}, got {line[:60]!r}")
                self.failed = True
                self.transport.close()
                return
            report.latencies.append(time.perf_counter() - self.sent_at)
            self.index += 1
            if self.index == len(self.texts):
                report.sessions += 1
                self.transport.close()
                return
            report.messages += 1
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.index < len(self.texts) and not self.failed:
            what = f": {exc!r}" if exc else ""
            if self.buffer:
                what += f" after {self.buffer[:60]!r}"
            self.load.error(f"closed before the reply to {self.texts[self.index]!r}{what}")
        if not self.done.done():
            self.done.set_result(None)


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

    async def session(self, tag: str, messages: int) -> None:
        loop = asyncio.get_running_loop()
        client = _Client(self, tag, messages)
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: client, self.host, self.port), self.timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            self.error(f"connect: {exc!r}")
            return
        try:
            # a session may take long in all; what must not stall is each reply
            while not client.done.done():
                index = client.index
                try:
                    await asyncio.wait_for(asyncio.shield(client.done), self.timeout)
                except asyncio.TimeoutError:
                    if client.index == index:
                        self.error(f"{tag}: no reply within {self.timeout} s")
                        client.failed = True
                        return
        finally:
            transport.close()


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
