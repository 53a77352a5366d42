"""progress=True on every pool's map, imap and amap: a bar drawn on a real
pseudo-terminal, nothing on a pipe, and the notebook decision."""

from __future__ import annotations

import builtins
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

import concur
from concur import _progress

# rich treats these as "a terminal" whatever the stream is; the tests set the stream.
TERMINAL_OVERRIDES = ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR")
READ_BOUND_S = 60


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TERMINAL_OVERRIDES}
    return dict(env, COLUMNS="100", TERM="xterm")


def on_a_terminal(path: str) -> tuple[int, str]:
    """Run the script at ``path`` with stderr on a pseudo-terminal: its exit
    code, and what it drew there as plain text (escape sequences removed)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, path], stdout=subprocess.DEVNULL, stderr=follower, env=environment()
    )
    os.close(follower)
    drawn = b""
    deadline = time.monotonic() + READ_BOUND_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            drawn += chunk
        code = proc.wait(timeout=READ_BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.decode(errors="replace"))


def piped(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, path], capture_output=True, text=True, timeout=60, env=environment()
    )


def script(tmp_path, body: str) -> str:
    """A script that runs ``body`` with ``concur`` imported, exiting 1 when
    the results are wrong (the bar must not change them)."""
    path = tmp_path / "work.py"
    path.write_text("import itertools, time\nimport concur\n\n" + textwrap.dedent(body))
    return str(path)


def frames(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[\r\n]+", text) if part.strip()]


POOL_MAP = """
def nap(x):
    time.sleep(0.005)
    return x * 2

if __name__ == "__main__":
    with concur.{pool}(2) as pool:
        assert list(pool.map(nap, range(40), progress=True)) == [x * 2 for x in range(40)]
"""


@pytest.mark.parametrize(("pool", "kind"), [("ThreadPool", "thread"), ("ProcessPool", "process")])
def test_pool_map_draws_a_bar_on_a_terminal_and_nothing_on_a_pipe(tmp_path, pool, kind):
    path = script(tmp_path, POOL_MAP.format(pool=pool))
    code, text = on_a_terminal(path)
    assert code == 0, text
    last = [f for f in frames(text) if "40/40" in f]
    assert last, text
    assert f"{kind} × 2" in last[-1]  # where the work ran
    assert "100%" in last[-1]
    out = piped(path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # not a terminal: nothing drawn


AUTO_AND_DASK_MAP = """
def nap(x):
    time.sleep(0.005)
    return x * 2

async def amapped():
    return [x async for x in concur.amap(nap, range(40), progress=True)]

if __name__ == "__main__":
    with concur.{pool} as pool:
        assert list(pool.map(nap, range(40), progress=True)) == [x * 2 for x in range(40)]
    if "{pool}".startswith("AutoPool"):
        import anyio
        assert anyio.run(amapped) == [x * 2 for x in range(40)]
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", ["AutoPool(2)", "DaskPool(n_workers=2)"])
def test_auto_and_dask_pool_map_and_concur_amap_draw_a_bar(tmp_path, pool):
    if pool.startswith("DaskPool"):
        pytest.importorskip("distributed", reason="the dask extra is not installed")
    path = script(tmp_path, AUTO_AND_DASK_MAP.format(pool=pool))
    code, text = on_a_terminal(path)
    assert code == 0, text
    finished = [f for f in frames(text) if "40/40" in f and "100%" in f]
    assert len(finished) >= (2 if pool.startswith("AutoPool") else 1), text  # map, then amap
    out = piped(path)
    assert out.returncode == 0, out.stderr
    assert "40/40" not in out.stderr  # not a terminal: no bar


def test_pool_imap_shows_the_total_of_a_list_and_a_count_for_endless_input(tmp_path):
    path = script(
        tmp_path,
        """
        if __name__ == "__main__":
            with concur.ProcessPool(2) as pool:
                assert list(pool.imap(abs, list(range(-30, 0)), progress=True)) == list(
                    range(30, 0, -1)
                )
                for i, value in enumerate(pool.imap(abs, itertools.count(), progress=True)):
                    assert value == i
                    if i == 249:
                        break
        """,
    )
    code, text = on_a_terminal(path)
    assert code == 0, text
    shown = frames(text)
    assert any("30/30" in f for f in shown), text
    counted = [f for f in shown if "done" in f]
    assert counted, text
    assert "250 done" in counted[-1]  # the last frame: where the loop stopped
    assert not any("/?" in f or "%" in f for f in counted)  # no total to show


def test_pool_views_and_autopool_draw_the_same_bar(tmp_path):
    path = script(
        tmp_path,
        """
        if __name__ == "__main__":
            with concur.ThreadPool(3) as pool:
                view = pool.options(timeout=30)
                assert list(view.map(abs, [-1] * 20, progress=True)) == [1] * 20
                assert list(view.imap(abs, [-2] * 25, progress=True)) == [2] * 25
            with concur.AutoPool(2) as pool:
                results = pool.imap(abs, [-3] * 35, progress=True)
                assert list(results) == [3] * 35
                assert results.decision is not None
        """,
    )
    code, text = on_a_terminal(path)
    assert code == 0, text
    shown = frames(text)
    for done in ("20/20", "25/25"):
        assert any(done in f and "thread × 3" in f for f in shown), text
    assert any("35/35" in f for f in shown), text
    out = piped(path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_pool_amap_draws_the_bar_too(tmp_path):
    pytest.importorskip("anyio")
    path = script(
        tmp_path,
        """
        import asyncio

        async def main():
            with concur.ThreadPool(2) as pool:
                got = [x async for x in pool.amap(abs, [-4] * 30, progress=True)]
                assert got == [4] * 30

        if __name__ == "__main__":
            asyncio.run(main())
        """,
    )
    code, text = on_a_terminal(path)
    assert code == 0, text
    assert any("30/30" in f and "thread × 2" in f for f in frames(text)), text
    out = piped(path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_closing_a_shown_imap_stops_the_run():
    with concur.ThreadPool(2) as pool:
        results = pool.imap(abs, range(10_000), progress=True)
        assert next(results) == 0
        results.close()
        with pytest.raises(StopIteration):
            next(results)


class ZMQInteractiveShell:
    """Named as the IPython kernel's shell, which is how a notebook is recognized."""


class TerminalInteractiveShell:
    """Named as IPython's shell in a terminal."""


@pytest.fixture
def no_overrides(monkeypatch):
    for name in (*TERMINAL_OVERRIDES, "JUPYTER_COLUMNS", "DATABRICKS_RUNTIME_VERSION"):
        monkeypatch.delenv(name, raising=False)


def test_a_notebook_gets_a_bar_and_a_pipe_does_not(monkeypatch, no_overrides):
    assert _progress.bar_console() is None  # pytest captures stderr: not a terminal
    monkeypatch.setattr(builtins, "get_ipython", ZMQInteractiveShell, raising=False)
    monkeypatch.setattr(_progress, "widgets_available", lambda: True)
    console = _progress.bar_console()
    assert console is not None and console.is_jupyter
    # IPython in a terminal is a terminal like any other: here, stderr is not one.
    monkeypatch.setattr(builtins, "get_ipython", TerminalInteractiveShell)
    assert _progress.bar_console() is None


def test_a_notebook_without_ipywidgets_is_told_what_to_install(monkeypatch, no_overrides):
    monkeypatch.setattr(builtins, "get_ipython", ZMQInteractiveShell, raising=False)
    monkeypatch.setattr(_progress, "widgets_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _progress.bar_console() is None
    assert any("pip install ipywidgets" in str(w.message) for w in caught)
