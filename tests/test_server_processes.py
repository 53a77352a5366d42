"""The process models of the server: reaping, crashes, parent death, limits."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from concur.server import TextSession, start
from concur.server.load import run_load

PROCESS_MODELS = ["process", "prefork", "hybrid"]


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def ask(sock: socket.socket, text: str) -> bytes:
    sock.sendall(text.encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def zombies_under(pid: int) -> list[int]:
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def wait_until(condition, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", ["process", "prefork"])
def test_no_zombie_after_ten_thousand_sessions(model):
    with start(port=0, model=model, workers=2) as server:
        clients = 4 if model == "process" else 2  # prefork serves `workers` at a time
        report = run_load(port=server.port, connections=clients, sessions=10_000)
        assert (report.sessions, report.errors) == (10_000, 0), report.samples
        assert wait_until(lambda: not zombies_under(server.pid), 1.0), "children left unreaped"
        # what is left: the two workers (prefork) or the two spares (process)
        assert wait_until(lambda: len(psutil.Process(server.pid).children()) == 2, 1.0)


class Crashing(TextSession):
    def on_message(self, text: str) -> tuple[str, bool]:
        if text == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        return text.upper(), False


@pytest.mark.parametrize("model", PROCESS_MODELS)
def test_a_crashed_handler_process_costs_only_its_connections(model, caplog):
    caplog.set_level(logging.INFO, logger="concur.server")
    with start(Crashing, port=0, model=model, workers=2) as server:
        with connect(server.port) as victim:
            assert ask(victim, "first") == b"FIRST\n"
            assert ask(victim, "crash") == b""  # the connection ends with its process
        if model == "prefork":
            # one connection per process: a bystander is always in another one
            with connect(server.port) as bystander:
                assert ask(bystander, "still here") == b"STILL HERE\n"
        for _ in range(4):  # the server goes on, on every worker it has
            with connect(server.port) as later:
                assert ask(later, "after") == b"AFTER\n"
        assert wait_until(lambda: "SIGKILL" in caplog.text, 5), caplog.text
    if model in ("process", "prefork"):  # one connection per process: its own log line
        assert "ended=process crashed (SIGKILL)" in caplog.text
    else:
        assert "crashed (SIGKILL); starting another" in caplog.text


class Deaf(TextSession):
    def on_message(self, text: str) -> tuple[str, bool]:
        if text == "deaf":  # this connection's process no longer hears "close now"
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return text.upper(), False


@pytest.mark.parametrize("model", ["process", "prefork"])
def test_a_process_that_does_not_close_when_told_is_killed_and_said_so(model, caplog):
    caplog.set_level(logging.INFO, logger="concur.server")
    server = start(Deaf, port=0, model=model, workers=2)
    try:
        with connect(server.port) as sock:
            assert ask(sock, "deaf") == b"DEAF\n"
            began = time.monotonic()
            server.close(0.0)
            assert time.monotonic() - began < 5
            assert sock.recv(1024) == b""
    finally:
        server.close(0.0)
    assert "ended=killed by the server (not closed 2 s after told to)" in caplog.text
    assert "process crashed" not in caplog.text


@pytest.mark.parametrize("model", PROCESS_MODELS)
def test_children_die_with_a_killed_master(model):
    server = start(port=0, model=model, workers=2)
    try:
        with connect(server.port) as sock:
            assert ask(sock, "hi") == b"HI\n"
            children = [c.pid for c in psutil.Process(server.pid).children()]
            assert children
            os.kill(server.pid, signal.SIGKILL)
            assert wait_until(lambda: gone(children), 1.0), "a child outlived its master"
            assert sock.recv(1024) == b""
            assert wait_until(lambda: server.failure is not None, 3)
            assert "process crashed (SIGKILL)" in server.failure
    finally:
        server.close(grace=0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _exit_code(proc: subprocess.Popen, timeout: float) -> int:
    """The server's exit code; one still running after ``timeout`` fails the
    test with every thread's stack (faulthandler, on SIGABRT) and its log."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        pytest.fail(f"the server did not exit within {timeout} s:\n{proc.stderr.read()[-6000:]}")


def _serve(*args: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "concur", "serve", "--port", str(port), *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            connect(port).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the server did not start: {proc.stderr.read()}") from None
            time.sleep(0.05)


@pytest.mark.parametrize("model", PROCESS_MODELS)
def test_nothing_outlives_a_server_killed_with_sigkill(model):
    proc, port = _serve("--model", model, "--workers", "2")
    try:
        with connect(port) as a, connect(port) as b:
            assert ask(a, "a") == b"A\n"
            assert ask(b, "b") == b"B\n"
            tree = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            assert len(tree) >= 2  # the master and at least one child serving
            proc.kill()
            proc.wait()
            assert wait_until(lambda: gone(tree), 1.5), "a server process outlived the server"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize("model", PROCESS_MODELS)
def test_concur_serve_exits_1_and_says_why_when_its_master_dies(model):
    proc, port = _serve("--model", model, "--workers", "2")
    try:
        # Serving, not starting: a session answered, and the caller has had
        # time to hear the master's "ready" (a master that dies before that
        # is reported as a failed start instead).
        with connect(port) as sock:
            assert ask(sock, "up") == b"UP\n"
        time.sleep(0.5)
        (master,) = psutil.Process(proc.pid).children()
        master.kill()
        killed = time.monotonic()
        assert proc.wait(timeout=10) == 1
        assert time.monotonic() - killed < 3
        log = proc.stderr.read()
        said = f"master process (pid {master.pid}) ended on its own: process crashed (SIGKILL)"
        assert said in log
        assert f"127.0.0.1:{port} no longer accepts connections" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize("model", ["thread", "process", "hybrid"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_server_gracefully(model, sig):
    proc, port = _serve("--model", model, "--workers", "2", "--grace", "5")
    try:
        with connect(port) as sock:
            assert ask(sock, "before") == b"BEFORE\n"
            proc.send_signal(sig)
            time.sleep(0.3)  # the server stops accepting; this session goes on
            assert ask(sock, "during") == b"DURING\n"
            assert ask(sock, "q") == b"q\n"
        assert proc.wait(timeout=10) == 0
        log = proc.stderr.read()
        assert "ended=session ended" in log
        with pytest.raises(ConnectionRefusedError):
            connect(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_the_open_files_limit_is_raised_to_the_hard_limit():
    script = textwrap.dedent(
        """
        import resource
        from concur.server import start
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        with start(port=0):
            print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard, hard > 256)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True"], out.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize("model", ["thread", "async", "hybrid"])
def test_running_out_of_file_descriptors_backs_off_and_recovers(model, tmp_path):
    # A server whose hard limit is 64 open files, flooded by 150 connections.
    script = textwrap.dedent(
        f"""
        import logging, resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from concur.server import start
        with start(port=0, model={model!r}, workers=1) as server:
            print(server.port, flush=True)
            sys.stdin.read()
        """
    )
    errors = (tmp_path / "stderr").open("w+")  # a file: the log must never block the server
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    try:
        port = int(proc.stdout.readline())
        flood = []
        for _ in range(150):
            sock = connect(port)
            flood.append(sock)
        time.sleep(1.5)  # the server hits its limit and backs off
        assert proc.poll() is None, "the server died of too many open files"
        for sock in flood:
            sock.close()
        assert wait_until(lambda: _answers(port), 20), "the server did not recover"
        assert wait_until(lambda: "accepting again" in (tmp_path / "stderr").read_text(), 10)
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
        errors.seek(0)
        log = errors.read()
        told = [line for line in log.splitlines() if not line.startswith("connection ")]
        # told in a few lines for the whole server, not once per failed accept
        assert 2 <= len(told) <= 6, f"{len(told)} lines: {told[:20]}"
        assert told[0].startswith("accept failed (Too many open files): raise the open-files")
        assert told[-1].startswith("accepting again: "), told
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        errors.close()


def _answers(port: int) -> bool:
    try:
        with connect(port) as sock:
            return ask(sock, "back") == b"BACK\n"
    except OSError:
        return False


class SometimesSlow(TextSession):
    def on_message(self, text: str) -> tuple[str, bool]:
        if text == "slow":
            time.sleep(0.6)
        return text.upper(), False


def _reply_time(sock: socket.socket, text: str) -> float:
    started = time.monotonic()
    assert ask(sock, text) == text.upper().encode() + b"\n"
    return time.monotonic() - started


@pytest.mark.parametrize("model", ["async", "hybrid"])
def test_an_event_loop_runs_a_blocking_handler_on_a_thread(model):
    with (
        start(SometimesSlow, port=0, model=model, workers=1, threads=4) as server,
        connect(server.port) as slow,
        connect(server.port) as fast,
    ):
        for _ in range(100):  # quick calls: the handler moves onto the loop
            assert ask(fast, "quick") == b"QUICK\n"
        for round_ in range(3):
            slow.sendall(b"slow\n")
            time.sleep(0.05)
            took = _reply_time(fast, "fast")
            # the first slow call after a quick streak may hold the loop once;
            # after it the handler is back on threads
            if round_ > 0:
                assert took < 0.3, f"a slow handler blocked the loop ({took:.2f} s)"
            assert slow.recv(1024) == b"SLOW\n"


class Stalled(logging.Handler):
    """The caller's logging, blocked until released: a paused terminal, a full pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.gate.wait(60)


class Failing(TextSession):
    """Each session logs a long traceback: a few fill the log socket."""

    def on_message(self, text: str) -> tuple[str, bool]:
        raise RuntimeError("the handler broke: " + "x" * 20_000)


@pytest.mark.parametrize("model", PROCESS_MODELS)
def test_a_caller_whose_logging_blocks_never_stops_the_server(model, caplog):
    caplog.set_level(logging.INFO, logger="concur.server")
    stalled = Stalled()
    logging.getLogger("concur.server").addHandler(stalled)
    try:
        with start(Failing, port=0, model=model, workers=2) as server:
            for _ in range(300):  # ~6 MB of tracebacks that nobody reads
                with connect(server.port) as sock:
                    assert ask(sock, "boom") == b""
            stalled.gate.set()
            assert wait_until(lambda: "dropped: the calling process" in caplog.text, 5)
    finally:
        stalled.gate.set()
        logging.getLogger("concur.server").removeHandler(stalled)
    assert "the handler broke: xxx" in caplog.text  # the records it had room for arrive


class Quoting(TextSession):
    def on_message(self, text: str) -> tuple[str, bool]:
        if text != "ok":
            raise ValueError(f"unknown command {text!r}")
        return "OK", False


@pytest.mark.parametrize("model", ["prefork", "hybrid"])
def test_a_record_longer_than_a_datagram_is_cut_not_lost(model, caplog):
    # 40,000 '"' quoted in a traceback: over 64 KiB once JSON-escaped
    caplog.set_level(logging.INFO, logger="concur.server")
    with start(Quoting, port=0, model=model, workers=2) as server:
        with connect(server.port) as sock:
            assert ask(sock, '"' * 40_000) == b""
        for _ in range(400):  # more than the log socket holds, had its reader died
            with connect(server.port) as sock:
                assert ask(sock, "ok") == b"OK\n"
        assert wait_until(lambda: caplog.text.count("messages=1 ended=client closed") >= 400, 5)
    assert 'ValueError: unknown command \'"""' in caplog.text
    assert "[cut]" in caplog.text


def _read_until(proc: subprocess.Popen, text: str, limit: float) -> str:
    """What the server wrote on stderr, up to and including ``text``."""
    fd, seen = proc.stderr.fileno(), b""
    deadline = time.monotonic() + limit
    while text.encode() not in seen and time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        chunk = os.read(fd, 65536) if readable else b""
        if readable and not chunk:
            break
        seen += chunk
    return seen.decode(errors="replace")


@pytest.mark.parametrize("model", ["thread", "async", "process", "prefork", "hybrid"])
def test_ctrl_c_says_what_it_waits_for_and_a_second_stops_at_once(model):
    proc, port = _serve("--model", model, "--workers", "2", "--grace", "30")
    try:
        _read_until(proc, "ended=client closed", 10)  # _serve's probe: no longer open
        with connect(port) as sock:
            assert ask(sock, "hi") == b"HI\n"
            proc.send_signal(signal.SIGINT)
            said = _read_until(proc, "Ctrl-C again to stop now", 10)
            assert "stopping: waiting up to 30 s for 1 session; Ctrl-C again to stop now" in said
            assert proc.poll() is None  # waiting for the session, which goes on
            assert ask(sock, "still") == b"STILL\n"
            pressed = time.monotonic()
            proc.send_signal(signal.SIGINT)
            assert _exit_code(proc, 10) == 0
            assert time.monotonic() - pressed < 3, "the second Ctrl-C did not stop it at once"
            assert sock.recv(1024) == b""
        said += proc.stderr.read()
        assert "stopping now: closing the open sessions" in said
        assert "ended=closed by server" in said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_ctrl_c_with_no_session_open_says_so_and_stops():
    proc, _ = _serve("--model", "prefork", "--workers", "2")
    try:
        _read_until(proc, "ended=client closed", 10)  # _serve's probe: no longer open
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        said = proc.stderr.read()
        assert "stopping: no open sessions" in said
        assert "stopped" in said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


ONE_AT_A_TIME = {"process": {"max_connections": 2, "workers": 1}, "prefork": {"workers": 2}}


@pytest.mark.parametrize("model", ["process", "prefork"])
def test_silent_connections_give_way_to_a_waiting_client(model, caplog):
    caplog.set_level(logging.INFO, logger="concur.server")
    with start(port=0, model=model, **ONE_AT_A_TIME[model]) as server:
        quiet = connect(server.port)  # says nothing
        try:
            time.sleep(0.3)
            with connect(server.port) as talker:  # both processes are taken
                assert ask(talker, "hi") == b"HI\n"
                waited = time.monotonic()
                with connect(server.port) as third:
                    assert ask(third, "let me in") == b"LET ME IN\n"  # not "busy"
                assert time.monotonic() - waited < 3  # about the second of silence it takes
                quiet.settimeout(5)
                assert quiet.recv(1024) == b""  # silent longest: it gave way
                assert ask(talker, "still here") == b"STILL HERE\n"
        finally:
            quiet.close()
        assert wait_until(lambda: "ended=idle, gave way to a waiting client" in caplog.text, 5)


class Slow(TextSession):
    def on_message(self, text: str) -> tuple[str, bool]:
        time.sleep(float(text))  # working, not silent: it never gives way
        return text, False


@pytest.mark.parametrize("model", ["process", "prefork"])
def test_a_client_waits_for_a_busy_process_rather_than_hearing_busy(model):
    options = {"max_connections": 1, "workers": 1}
    with start(Slow, port=0, model=model, **options) as server, connect(server.port) as first:
        first.sendall(b"1\n")
        time.sleep(0.2)
        with connect(server.port) as second:
            assert ask(second, "0") == b"0\n"  # served once the first process is free
        assert first.recv(1024) == b"1\n"


@pytest.mark.parametrize("model", ["process", "prefork"])
def test_a_client_that_waited_the_queue_timeout_hears_busy(model):
    options = {"max_connections": 1, "workers": 1, "queue_timeout": 0.3}
    with start(Slow, port=0, model=model, **options) as server, connect(server.port) as first:
        first.sendall(b"1.5\n")
        time.sleep(0.1)
        waited = time.monotonic()
        with connect(server.port) as second:
            assert second.recv(1024).startswith(b"busy")
        assert 0.25 < time.monotonic() - waited < 1.4  # the queue timeout, not the 1.5 s
        assert first.recv(1024) == b"1.5\n"


def test_prefork_by_default_serves_a_load_check_past_as_many_idle_sockets_as_workers():
    with start(port=0, model="prefork") as server:
        idle = [connect(server.port) for _ in range(2 * (os.cpu_count() or 1) + 1)]
        try:
            time.sleep(0.3)  # every worker holds a client that says nothing
            report = run_load(port=server.port, connections=100, messages=100)
            assert (report.sessions, report.errors) == (100, 0), report.samples
        finally:
            for sock in idle:
                sock.close()
