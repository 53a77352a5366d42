"""concur ps on real programs: roles, the task a worker runs, --watch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

from conftest import concur_ps

PROGRAM = textwrap.dedent(
    """
    import time, concur

    def long_task(x):
        time.sleep(60)

    if __name__ == "__main__":
        with concur.ProcessPool(2) as pool:
            futures = [pool.submit(long_task, i) for i in range(2)]
            while sum(w.state == "busy" for w in pool.workers()) < 2:
                time.sleep(0.02)
            print("ready", flush=True)
            time.sleep(60)
    """
)


@contextlib.contextmanager
def running(tmp_path, code: str, env=None) -> Iterator[subprocess.Popen[str]]:
    """Run ``code`` as a script until it prints "ready"; kill it afterwards."""
    script = tmp_path / "program.py"
    script.write_text(code)
    program = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert program.stdout is not None
        assert program.stdout.readline().strip() == "ready"
        yield program
    finally:
        program.kill()
        program.wait()
        if program.stdout is not None:
            program.stdout.close()


def test_concur_ps_finds_programs_and_shows_what_workers_run(tmp_path):
    with running(tmp_path, PROGRAM) as program:
        time.sleep(0.3)
        shown = concur_ps("--json")
        assert shown.returncode == 0, shown.stderr
        rows = json.loads(shown.stdout)
        roots = [row for row in rows if row["pid"] == program.pid]
        assert roots and roots[0]["role"] == "program" and roots[0]["depth"] == 0
        workers = [row for row in rows if row["role"] == "pool worker"]
        mine = [w for w in workers if w["task"] and w["task"].endswith("long_task")]
        assert len(mine) == 2
        assert all(w["running_for"] > 0.2 and w["state"] == "sleeping" for w in mine)
        assert all(w["rss"] > 0 and w["threads"] >= 1 for w in mine)
        table = concur_ps(str(program.pid)).stdout
        assert "pool worker" in table and "fork server" in table and "long_task for" in table


def test_concur_ps_watch_refreshes_until_ctrl_c():
    watch = subprocess.Popen(
        [sys.executable, "-m", "concur", "ps", "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.0)
    watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert "concur ps" in out or "no concur program" in out


def test_concur_ps_says_when_a_pid_does_not_exist():
    done = concur_ps("999999999")
    assert done.returncode == 2
    assert "no process has pid 999999999" in done.stderr


SPINNER = textwrap.dedent(
    """
    import time, concur

    def spin(x):
        end = time.monotonic() + 60
        while time.monotonic() < end:
            pass

    if __name__ == "__main__":
        with concur.ProcessPool(1) as pool:
            pool.submit(spin, 0)
            while not any(w.state == "busy" for w in pool.workers()):
                time.sleep(0.02)
            print("ready", flush=True)
            time.sleep(60)
    """
)


def test_concur_ps_measures_cpu_of_a_busy_worker(tmp_path):
    with running(tmp_path, SPINNER) as program:
        shown = concur_ps(str(program.pid), "--json")
        (worker,) = [row for row in json.loads(shown.stdout) if row["role"] == "pool worker"]
        assert worker["task"].endswith("spin")
        assert worker["cpu_percent"] > 30  # a spinning worker, measured over 0.2 s


MARKUP = textwrap.dedent(
    """
    import functools, time, concur

    def long_task(x):
        time.sleep(60)

    if __name__ == "__main__":
        with concur.ProcessPool(1) as pool:
            pool.submit(functools.partial(long_task, "[/] [bold]x[/bold]"))
            while not any(w.state == "busy" for w in pool.workers()):
                time.sleep(0.02)
            print("ready", flush=True)
            time.sleep(60)
    """
)


def test_concur_ps_shows_task_labels_as_text_not_markup(tmp_path):
    with running(tmp_path, MARKUP) as program:
        time.sleep(0.3)
        shown = concur_ps(str(program.pid))
        assert shown.returncode == 0, shown.stderr
        text = " ".join(shown.stdout.split())
        assert "[/] [bold]x[/bold]" in text


def test_without_setproctitle_a_workers_state_is_unknown_not_idle(tmp_path):
    # A setproctitle package with no extension module: concur cannot title its workers.
    hidden = tmp_path / "hidden" / "setproctitle"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    env = dict(os.environ, PYTHONPATH=str(hidden.parent))
    with running(tmp_path, PROGRAM, env) as program:
        rows = json.loads(concur_ps(str(program.pid), "--json").stdout)
        workers = [row for row in rows if row["role"] == "pool worker"]
        assert len(workers) == 2
        assert all(w["task"] is None and w["activity"] == "unknown" for w in workers)
        table = " ".join(concur_ps(str(program.pid)).stdout.split())
        assert "idle" not in table
        assert "unknown" in table and "pip install setproctitle" in table
