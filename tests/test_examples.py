"""Every example runs, within a time limit, and prints what it demonstrates."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import concur_ps

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(name: str, *args: str, timeout: float = 90) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_lesson_has_an_example():
    assert len(sorted(EXAMPLES.glob("[0-9][0-9]_*.py"))) == 11


def test_start_and_join():
    out = run("01_start_and_join.py")
    assert "the process exited with code 0; its return value is lost" in out
    assert re.search(r"concur-process returned: 'hello process x3 from pid \d+'", out)
    assert re.search(r"concur-thread returned: 'hello thread x4 from pid \d+'", out)


def test_target_or_subclass():
    out = run("02_target_or_subclass.py")
    assert "target: running in pid" in out and "subclass: running in pid" in out
    assert "closure ran in pid" in out
    assert "all three exited with code 0: [0, 0, 0]" in out


def test_names_and_pids():
    out = run("03_names_and_pids.py")
    assert "threads share the main pid: True" in out
    assert "is a child of this program: True" in out
    assert "with mp_context='spawn' the parent is this program: True" in out
    assert "a process that calls os._exit(3) has exit code 3" in out


def test_memory_isolation():
    out = run("04_memory_isolation.py")
    assert "each process saw its own copy: [101, 101, 101, 101]; main counter is still 100" in out
    assert "four threads shared one counter: it reached 104" in out


def test_where_join_goes():
    out = run("05_where_join_goes.py")
    ratio = float(re.search(r"took ([\d.]+)x as long", out).group(1))
    assert ratio > 2  # four 0.2 s naps: about 4x serial, bounded loosely for a busy machine


def test_main_guard():
    out = run("06_main_guard.py")
    stdlib, concur_bare, mixed, guarded = out.split("--- ")[1:]
    assert "bootstrapping phase" in stdlib
    assert "exit code 0" in concur_bare and concur_bare.splitlines()[-1].strip() == "5"
    assert "was importing the main module" in mixed and 'if __name__ == "__main__":' in mixed
    assert "the plain child's exit code: 78" in mixed
    assert "exit code 0" in guarded and "5" in guarded.splitlines()[-1]


@pytest.mark.parametrize("model", ["process", "async"])
def test_tcp_server(model):
    out = run("07_tcp_server.py", "--model", model)
    assert "got ['HELLO', 'WORLD', 'q']" in out
    assert "got ['STRASSE', 'ΩMEGA 123', 'q']" in out


def test_cpu_versus_io():
    out = run("08_cpu_versus_io.py", timeout=120)
    cpu, io = out.split("IO-bound")
    assert "→ 2 processes" in cpu or "inline" in cpu.split("auto")[1]  # 1-core machines
    assert "threads" in io.split("auto")[1]
    times = {k: float(v) for k, v in re.findall(r"^\s+(\w+)\s+([\d.]+) s", io, re.M)}
    assert times["thread"] < times["inline"] / 3  # waiting overlaps on threads


def test_zombie_made_reaped_and_shown_by_concur_ps():
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "09_zombie.py"), "--hold", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert "its state is now: zombie" in first
        zombie = int(re.search(r"child (\d+) exited", first).group(1))
        assert "holding" in proc.stdout.readline()
        shown = concur_ps(str(proc.pid), "--json")
        rows = {row["pid"]: row for row in json.loads(shown.stdout)}
        assert rows[zombie]["flags"] == ["zombie"]
        assert "wait" in rows[zombie]["notes"][0]
        text = concur_ps(str(proc.pid)).stdout
        assert "zombie: it has exited" in text
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_zombie_example_runs_to_the_end():
    out = run("09_zombie.py")
    assert "reaped with waitpid: exit code 7" in out
    assert "is it still there? False" in out
    assert "a pool that replaced 20 workers left 0 zombies" in out


def test_orphan_adopted_and_shown_by_concur_ps():
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "10_orphan.py"), "--hold", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    orphan = None
    try:
        first = proc.stdout.readline()
        orphan = int(re.search(r"its child (\d+) now has parent", first).group(1))
        assert "holding" in proc.stdout.readline()
        shown = concur_ps(str(orphan), "--json")
        (row,) = json.loads(shown.stdout)
        assert row["flags"] == ["orphan"]
        assert "adopted" in row["notes"][0]
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        if orphan is not None and psutil.pid_exists(orphan):
            psutil.Process(orphan).kill()


def test_orphan_example_runs_to_the_end():
    out = run("10_orphan.py")
    assert re.search(r"now has parent \d+", out)
    assert "workers still running after" in out and out.rstrip().endswith("[]")


def test_daemons():
    out = run("11_daemons.py")
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert (
        lines["process daemon    "].startswith(" 3 of 5") or "of 5" in lines["process daemon    "]
    )
    for kind in ("process", "thread"):
        daemon = int(lines[f"{kind:7} daemon    "].split()[0])
        patient = int(lines[f"{kind:7} non-daemon"].split()[0])
        assert daemon < 5 and patient == 5
