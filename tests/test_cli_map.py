"""concur map / concur advise, and progress bars, through real subprocesses."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import textwrap

import pytest

TOOLS = textwrap.dedent(
    """
    import time

    def shout(line):
        return line.upper()

    def parse(line):
        return int(line)

    def nap(line):
        time.sleep(0.02)
        return len(line)

    def env(line):
        import os
        return os.environ.get(line)
    """
)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "tools.py").write_text(TOOLS)
    return tmp_path


def concur(workdir, *args, stdin=""):
    return subprocess.run(
        [sys.executable, "-m", "concur", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
    )


def test_map_prints_one_json_result_per_line_in_order(workdir):
    lines = [f"line {i} straße" for i in range(300)]
    out = concur(workdir, "map", "tools:shout", stdin="\n".join(lines) + "\n")
    assert out.returncode == 0, out.stderr
    assert [json.loads(x) for x in out.stdout.splitlines()] == [x.upper() for x in lines]
    assert "concur map:" in out.stderr  # the decision, on stderr


def test_map_reads_a_file(workdir):
    (workdir / "numbers.txt").write_text("1\n2\n3\n")
    out = concur(workdir, "map", "tools:parse", "numbers.txt")
    assert out.stdout.split() == ["1", "2", "3"]


def test_a_failed_line_is_reported_with_its_number_and_the_rest_go_on(workdir):
    out = concur(workdir, "map", "tools:parse", stdin="1\nx\n3\n")
    assert out.returncode == 1
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert rows[0] == 1 and rows[2] == 3
    assert rows[1]["line"] == 2 and "ValueError" in rows[1]["error"]
    assert "line 2: ValueError" in out.stderr


def test_fail_fast_stops_at_the_first_error(workdir):
    out = concur(workdir, "map", "tools:parse", "--fail-fast", stdin="1\nx\n3\n")
    assert out.returncode == 1
    assert "stopped at line 2, the first failure: ValueError" in out.stderr
    assert "3" not in out.stdout.split()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nope:x", "cannot import 'nope'"),
        ("tools", "MODULE:FUNCTION"),
        ("tools:missing", "no 'missing'"),
    ],
)
def test_bad_targets_say_what_to_do(workdir, target, message):
    out = concur(workdir, "map", target)
    assert out.returncode == 2
    assert message in out.stderr


def test_advise_prints_the_decision(workdir):
    out = concur(workdir, "advise", "tools:nap", stdin="\n".join("abc" for _ in range(20)))
    assert out.returncode == 0, out.stderr
    fields = dict(line.split(":", 1) for line in out.stdout.splitlines())
    assert fields["backend"].strip() == "thread"
    assert "waiting" in fields["reason"]
    assert fields["for"].strip() == "a long run"  # a pipe: its length is unknown


def test_advise_decides_for_the_whole_file_and_warns_of_failures(workdir):
    data = workdir / "numbers.txt"
    data.write_text("\n".join(["1", "x", "3"] * 100) + "\n")
    out = concur(workdir, "advise", "tools:parse", str(data), "--sample", "30")
    assert out.returncode == 0, out.stderr
    fields = dict(line.split(":", 1) for line in out.stdout.splitlines())
    assert fields["for"].strip() == "300 items"
    # 300 cheap calls: decided (and costed) for those 300, not for a long run.
    # The reason is one of two, as the sample measured: what is left is
    # short, or the items are cheaper than a worker; the latter's estimate
    # is then for 300 items (a long run of them would take seconds).
    reason = fields["reason"]
    estimate = re.search(r"estimated: inline ([\d.]+) (µs|ms|s)\b", reason)
    assert "all that is left takes" in reason or estimate is not None, reason
    if estimate is not None:
        scale = {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[estimate.group(2)]
        assert float(estimate.group(1)) * scale < 0.1, reason
    assert "1,000,000" not in reason
    assert fields["warning"].strip().startswith("10 of 30 sampled items raised (first: ValueError")
    assert "--items" in concur(workdir, "advise", "--help").stdout


def on_a_terminal(workdir, argv):
    """Run ``argv`` with stderr on a pseudo-terminal; what it drew there, as text."""
    leader, follower = pty.openpty()
    env = dict(os.environ, COLUMNS="100", TERM="xterm")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=follower, cwd=workdir, env=env)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    proc.wait(timeout=60)
    os.close(leader)
    return drawn.decode(errors="replace")


def test_map_on_a_terminal_prints_errors_above_the_bar_and_counts_a_file(workdir):
    lines = ["x" if i % 100 == 0 else str(i) for i in range(1, 301)]
    (workdir / "numbers.txt").write_text("\n".join(lines) + "\n")
    argv = [sys.executable, "-m", "concur", "map", "tools:parse", "numbers.txt"]
    text = on_a_terminal(workdir, argv)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    segments = [part.strip() for part in re.split(r"[\r\n]+", plain)]
    for number in (100, 200, 300):
        # Each message on a line of its own: not appended to a frame of the bar.
        assert any(s.startswith(f"concur map: line {number}: ValueError") for s in segments)
        assert not any("━" in s and f"line {number}:" in s for s in segments)
    assert "300/300" in plain and "/?" not in plain


def test_progress_bar_on_a_terminal_only(workdir):
    code = "import concur, time\nconcur.map(time.sleep, [0.01] * 50, progress=True)\n"
    piped = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=workdir
    )
    assert piped.returncode == 0
    assert piped.stderr == ""  # not a terminal: nothing drawn
    text = on_a_terminal(workdir, [sys.executable, "-c", code])
    assert "50/50" in text
    assert "thread" in text  # the backend in use


PLANTED = textwrap.dedent(
    """
    import os, sys
    open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RAN-" + __name__), "w").close()
    raise SystemExit(__name__ + " from the working directory ran")
    """
)
# Modules concur and its dependencies import while a command runs.
SHADOWED = ["colorsys", "click", "rich", "cloudpickle", "psutil", "selectors"]


@pytest.mark.parametrize("entry", ["script", "-m"])
@pytest.mark.parametrize("command", ["map", "advise"])
def test_modules_in_the_working_directory_do_not_shadow_concurs_own(workdir, entry, command):
    for name in SHADOWED:
        (workdir / f"{name}.py").write_text(PLANTED)
    if entry == "script":
        argv = [os.path.join(os.path.dirname(sys.executable), "concur")]
    else:
        argv = [sys.executable, "-m", "concur"]
    extra = ["--backend", "process", "--workers", "2"] if command == "map" else []
    out = subprocess.run(
        [*argv, command, "tools:shout", *extra],
        input="a\nb\nc\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
    )
    assert sorted(p.name for p in workdir.glob("RAN-*")) == []
    assert out.returncode == 0, out.stderr
    if command == "map":
        assert [json.loads(x) for x in out.stdout.splitlines()] == ["A", "B", "C"]
    else:
        assert out.stdout.startswith("backend:")


def test_workers_see_the_environment_the_program_has(workdir):
    names = ["PYTHONSAFEPATH", "CONCUR_SET_PYTHONSAFEPATH", "HOME"]
    out = concur(workdir, "map", "tools:env", "--backend", "process", stdin="\n".join(names) + "\n")
    assert out.returncode == 0, out.stderr
    assert [json.loads(x) for x in out.stdout.splitlines()] == [None, None, os.environ["HOME"]]


def test_help_says_where_module_is_looked_up(workdir):
    for command in ("map", "advise"):
        text = " ".join(concur(workdir, command, "--help").stdout.split())
        assert "then in the current directory" in text
