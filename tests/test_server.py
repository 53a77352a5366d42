"""The TCP server, first models: real sockets on 127.0.0.1, ephemeral ports."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from concur.server import Reply, Session, TextSession, UppercaseSession, start

MODELS = ["thread", "async", "process", "prefork", "hybrid"]


@pytest.fixture(params=MODELS)
def model(request):
    return request.param


@pytest.fixture
def server(model):
    running = start(port=0, model=model, idle_timeout=5)
    yield running
    running.close(grace=1)


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return sock


def read_until(sock: socket.socket, expected: bytes) -> bytes:
    data = b""
    while len(data) < len(expected):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def test_the_seed_client_exchange(server):
    # The seed's client: raw text, no newline, one reply per message, 1,024-byte reads.
    with connect(server) as sock:
        for text in ["hello", "Hello, World 123!", "straße"]:
            sock.sendall(text.encode())
            assert sock.recv(1024).decode() == text.upper()
        sock.sendall(b"q")
        assert sock.recv(1024) == b"q"
        assert sock.recv(1024) == b""  # the server closed the session


def test_line_oriented_clients_like_nc(server):
    with connect(server) as sock:
        sock.sendall(b"one\ntwo\r\nthr")
        assert read_until(sock, b"ONE\nTWO\n") == b"ONE\nTWO\n"
        sock.sendall(b"ee\nq\n")
        assert read_until(sock, b"THREE\nq\n") == b"THREE\nq\n"
        assert sock.recv(1024) == b""


def test_a_character_split_across_segments_is_not_broken(server):
    with connect(server) as sock:
        encoded = "straße\n".encode()
        cut = encoded.index(b"\xc3") + 1  # between the two bytes of ß
        sock.sendall(encoded[:cut])
        time.sleep(0.05)  # make the split reach the server as two reads
        sock.sendall(encoded[cut:])
        assert read_until(sock, b"STRASSE\n") == b"STRASSE\n"


def test_invalid_utf8_gets_an_error_and_the_session_goes_on(server):
    with connect(server) as sock, connect(server) as other:
        sock.sendall(b"\xff\xfe\n")
        assert b"not UTF-8" in sock.recv(1024)
        sock.sendall(b"fine\n")
        assert read_until(sock, b"FINE\n") == b"FINE\n"
        other.sendall(b"other\n")
        assert read_until(other, b"OTHER\n") == b"OTHER\n"


def test_busy_reply_at_the_connection_limit(model):
    # queue_timeout=0: process and prefork say busy at once (by default a
    # client waits for a free process, and an idle one gives way to it)
    limited = start(port=0, model=model, max_connections=1, queue_timeout=0)
    with limited as server, connect(server) as first:
        first.sendall(b"x\n")
        assert read_until(first, b"X\n") == b"X\n"
        with connect(server) as second:
            assert second.recv(1024).startswith(b"busy")
            assert second.recv(1024) == b""
        first.sendall(b"y\n")
        assert read_until(first, b"Y\n") == b"Y\n"


def test_silent_clients_are_closed_after_the_idle_timeout(model):
    with start(port=0, model=model, idle_timeout=0.3) as server, connect(server) as sock:
        started = time.monotonic()
        assert sock.recv(1024) == b""
        assert 0.25 < time.monotonic() - started < 3


class Exploding(TextSession):
    def on_message(self, text: str) -> tuple[str, bool]:
        if text == "boom":
            raise RuntimeError("the handler broke")
        return text[::-1], False


def test_a_failing_handler_ends_only_its_connection(model, caplog):
    with (
        caplog.at_level(logging.INFO, logger="concur.server"),
        start(Exploding, port=0, model=model) as server,
        connect(server) as a,
        connect(server) as b,
    ):
        a.sendall(b"boom\n")
        assert a.recv(1024) == b""
        b.sendall(b"abc\n")
        assert read_until(b, b"cba\n") == b"cba\n"
        deadline = time.monotonic() + 5
        while "handler failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "the handler broke" in caplog.text  # the traceback is logged
    assert "ended=handler failed" in caplog.text


class Counter(Session):
    """State lives on the session object: one per connection."""

    def __init__(self, peer: str) -> None:
        super().__init__(peer)
        self.count = 0

    def feed(self, data: bytes) -> Reply:
        self.count += data.count(b"\n")
        self.messages = self.count
        return Reply(f"{self.count}\n".encode())


def test_sessions_keep_their_own_state(model):
    with start(Counter, port=0, model=model) as server, connect(server) as a, connect(server) as b:
        a.sendall(b"1\n2\n")
        assert read_until(a, b"2\n") == b"2\n"
        b.sendall(b"1\n")
        assert read_until(b, b"1\n") == b"1\n"


def test_graceful_close_lets_open_sessions_finish_then_closes_them(model):
    server = start(port=0, model=model)
    sock = connect(server)
    sock.sendall(b"hi\n")
    assert read_until(sock, b"HI\n") == b"HI\n"
    started = time.monotonic()
    server.close(grace=0.3)
    assert time.monotonic() - started < 3
    assert sock.recv(1024) == b""  # closed by the server after the grace period
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1)


def test_uppercase_is_unicode_aware():
    session = UppercaseSession("test")
    assert session.feed("straße".encode()) == Reply(b"STRASSE")
    assert session.feed(b"q") == Reply(b"q", close=True)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="model"):
        start(port=0, model="fibers")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_concur_serve_and_concur_client_end_to_end():
    import signal
    import subprocess
    import sys

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "concur", "serve", "--port", str(port), "--grace", "0.5"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        talk = subprocess.run(
            [sys.executable, "-m", "concur", "client", "--port", str(port)],
            input="hello 1, 2\nstraße\nq\nnever sent\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert talk.returncode == 0, talk.stderr
        assert talk.stdout.splitlines() == ["HELLO 1, 2", "STRASSE", "q"]
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
        log = server.stderr.read()
        assert "serving on 127.0.0.1" in log
        assert "messages=3 ended=session ended" in log  # one line per connection
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stderr.close()
    gone = subprocess.run(
        [sys.executable, "-m", "concur", "client", "--port", str(port)],
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert gone.returncode == 1
    assert "cannot reach" in gone.stderr


def test_max_message_refuses_a_longer_line(model):
    with start(port=0, model=model, max_message=8) as server, connect(server) as sock:
        sock.sendall(b"short\n")
        assert read_until(sock, b"SHORT\n") == b"SHORT\n"
        sock.sendall(b"x" * 50 + b"\n")
        assert b"longer than 8 characters" in sock.recv(1024)
        assert sock.recv(1024) == b""


class Reverse(TextSession):
    def on_message(self, text: str) -> tuple[str, bool]:
        return ("q", True) if text == "q" else (text[::-1], False)


def test_concur_load_checks_every_reply_and_reports_rates():
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "concur", "load", "-c", "3", "-m", "20", "--json"]
    with start(port=0) as good:
        run = subprocess.run(
            [*command, "--port", str(good.port)], capture_output=True, text=True, timeout=60
        )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert (report["sessions"], report["messages"], report["errors"]) == (3, 60, 0)
    assert report["messages_per_s"] > 0 and report["p99_ms"] >= report["p50_ms"] > 0
    with start(Reverse, port=0) as wrong:
        run = subprocess.run(
            [*command[:-1], "--port", str(wrong.port)], capture_output=True, text=True, timeout=60
        )
    assert run.returncode == 1
    assert "3 errors" in run.stdout and "got b'" in run.stderr


def test_concur_load_counts_short_sessions():
    from concur.server.load import run_load

    with start(port=0, model="async") as server:
        report = run_load(port=server.port, connections=5, sessions=200)
    assert (report.sessions, report.messages, report.errors) == (200, 200, 0)
    assert report.sessions_per_s > 0


def test_a_handler_made_in_a_function_reaches_the_process_models(model):
    suffix = "!"  # a closure: the handler class is pickled by value, not by name

    class Shout(TextSession):
        def on_message(self, text: str) -> tuple[str, bool]:
            return ("q", True) if text == "q" else (text.upper() + suffix, False)

    with start(Shout, port=0, model=model) as server, connect(server) as sock:
        sock.sendall(b"hey\n")
        assert read_until(sock, b"HEY!\n") == b"HEY!\n"


def test_the_process_models_master_stays_free_of_threading():
    """A master without threading (or logging, which imports it) forks with
    about half the page faults: its children skip threading's at-fork hooks."""
    import subprocess
    import sys

    code = (
        "import pickle, sys\n"
        "import concur.server._master as master\n"
        "from concur.server.protocol import UppercaseSession\n"
        "pickle.loads(pickle.dumps(UppercaseSession))\n"
        "master.load_libc()\n"
        "master.set_title('concur-server (test)', 'concur-server')\n"
        "master.log.to_events(lambda level, text: None, 20)\n"
        "master.log.info('a line %s', 1)\n"
        "print(sorted(m for m in ('threading', 'logging', 'asyncio') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_server_log_records_name_their_call_site(caplog):
    from concur.server._drive import log

    def reports_trouble():
        log.warning("trouble %d", 7)

    with caplog.at_level(logging.WARNING, logger="concur.server"):
        reports_trouble()
    record = caplog.records[-1]
    assert (record.getMessage(), record.funcName) == ("trouble 7", "reports_trouble")
