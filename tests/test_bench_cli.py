"""The benchmark end to end at a tiny size, and the command line around it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from concur.bench.backends import BACKENDS
from concur.bench.runner import SCENARIOS
from concur.cli import cli


@pytest.mark.timeout(300)
def test_bench_writes_every_scenario_and_backend_to_json_and_a_chart(tmp_path):
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    result = CliRunner().invoke(
        cli,
        ["bench", "--repeat", "1", "--scale", "0.01", "--json", str(out), "--plot", str(chart)],
    )
    assert result.exit_code == 0, result.output
    assert "CPUs" in result.output
    assert "start method" in result.output
    data = json.loads(out.read_text())
    pairs = {(row["scenario"], row["backend"]) for row in data["results"]}
    assert pairs == {(s, b) for s in SCENARIOS for b in BACKENDS if SCENARIOS[s].runs(b)}
    ran_on = {s: {b for (t, b) in pairs if t == s} for s in SCENARIOS}
    assert "bare-pipe" in ran_on["latency"]
    assert "bare-pipe" not in ran_on["tiny"]
    assert "ThreadPoolExecutor-256" not in ran_on["tiny"]
    # Auto's scenarios: auto against every fixed choice, and only those.
    assert ran_on["capacity-server"] == {
        "serial",
        "concur-auto",
        "ProcessPoolExecutor",
        "ThreadPoolExecutor-4",
        "ThreadPoolExecutor-32",
        "ThreadPoolExecutor-256",
    }
    latency = {r["backend"]: r for r in data["results"] if r["scenario"] == "latency"}
    assert latency["bare-pipe"]["x_pipe"] == pytest.approx(1.0)
    pipe_us = latency["bare-pipe"]["median"]
    assert latency["concur-process"]["x_pipe"] == pytest.approx(
        latency["concur-process"]["median"] / pipe_us
    )
    for row in data["results"]:
        backend = BACKENDS[row["backend"]]
        skipped = SCENARIOS[row["scenario"]].skip(backend)
        if backend.unavailable() or skipped:
            assert row["median"] is None, row  # reported as such, not hidden
            assert row["error"], row
        else:
            assert row["error"] is None, row
            assert row["median"] is not None
            assert row["median"] >= 0
    crash = {r["backend"]: r["median"] for r in data["results"] if r["scenario"] == "crash"}
    assert crash["concur-process"] == 99  # only the task whose worker died is lost
    assert data["environment"]["cpus"] >= 1
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(str(chart)).shape
    assert width > 800
    assert height > 600


def test_a_missing_plot_library_is_explained_before_anything_runs(monkeypatch):
    from concur.bench import plot

    def missing() -> None:
        raise ImportError("concur bench --plot needs matplotlib: pip install 'concur[plot]'")

    monkeypatch.setattr(plot, "require_matplotlib", missing)
    result = CliRunner().invoke(cli, ["bench", "--quick", "--plot", "x.png"])
    assert result.exit_code == 2
    assert "pip install 'concur[plot]'" in result.output


def test_quick_runs_the_short_scenarios():
    quick = [name for name, s in SCENARIOS.items() if s.quick]
    assert {"seed-cpu", "seed-io", "latency", "crash"} <= set(quick)
    assert "mixed" not in quick


def test_quick_leaves_out_dask_and_says_so():
    argv = ["bench", "--quick", "--scenario", "startup", "--scale", "0.01", "--repeat", "1"]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    assert "│ concur-dask" not in result.output and "│ dask " not in result.output
    assert "│ concur-process" in result.output
    text = " ".join(result.output.split())
    assert "--quick leaves out concur-dask, dask" in text and "--backend NAME" in text


def test_bench_rejects_unknown_names():
    result = CliRunner().invoke(cli, ["bench", "--scenario", "nope"])
    assert result.exit_code == 2
    assert "unknown scenario nope" in result.output


def test_python_dash_m_concur_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "concur", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.startswith("concur, version")


def test_bench_list():
    result = CliRunner().invoke(cli, ["bench", "--list"])
    assert result.exit_code == 0
    for name in list(SCENARIOS) + list(BACKENDS):
        assert name in result.output


# The benchmark as `make demo` runs it on a fresh install: without the peers
# or Dask (a module set to None in sys.modules cannot be found or imported).
WITHOUT_PEERS = """
import sys
for name in ("joblib", "loky", "mpire", "pebble", "distributed"):
    sys.modules[name] = None
from concur.cli import main
sys.argv = ["concur", *sys.argv[1:]]
main()
"""


def test_missing_peers_are_one_line_with_whole_install_hints():
    argv = ["bench", "--scenario", "seed-io", "--scenario", "tiny", "--repeat", "1"]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PEERS, *argv, "--scale", "0.01"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert text.count("Not installed, so not run:") == 1
    assert "concur-dask, dask (pip install 'concur[dask]')" in text
    assert "joblib, loky, mpire, pebble (pip install 'concur[peers]')" in text
    rows = [line for line in done.stdout.splitlines() if line.startswith("│")]
    assert not [row for row in rows if "not installed" in row or "│ joblib" in row]
    assert [row for row in rows if row.startswith("│ concur-thread")]  # what ran is there


def test_chart_labels_read_at_every_size():
    from concur.bench.plot import value_label

    assert value_label(0.00031, "s") == "310 µs"
    assert value_label(0.0042, "s") == "4.2 ms"
    assert value_label(0.287, "s") == "287 ms"
    assert value_label(8.17, "s") == "8.17 s"
    assert value_label(0.08, "µs/call") == "0.08 µs"
    assert value_label(8.3, "µs/call") == "8.3 µs"
    assert value_label(10742.1, "µs/call") == "10.7 ms"
    assert value_label(99, "results") == "99"


DASK_LOGGERS = ["distributed", "distributed.scheduler", "distributed.nanny", "distributed.client"]


def test_the_run_keeps_dasks_warnings_out_of_its_output():
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    import logging

    from concur.bench import BenchConfig, run_bench

    before = {name: logging.getLogger(name).level for name in DASK_LOGGERS}
    heard = []

    def progress(text: str) -> None:  # called before each run: from the 2nd, a cluster runs
        heard.append([logging.getLogger(n).isEnabledFor(logging.WARNING) for n in DASK_LOGGERS])

    cfg = BenchConfig(scenarios=["startup"], backends=["dask"], repeat=2, scale=0.01)
    results = run_bench(cfg, progress=progress)
    assert results[("startup", "dask")].samples  # it ran
    assert heard[1:] and all(not any(levels) for levels in heard[1:])
    assert {name: logging.getLogger(name).level for name in DASK_LOGGERS} == before


def test_bench_stats_prints_what_each_concur_pool_did():
    args = ["bench", "--scenario", "latency", "--repeat", "1", "--scale", "0.01"]
    args += ["--backend", "concur-process", "--backend", "concur-thread"]
    args += ["--backend", "ThreadPoolExecutor"]
    result = CliRunner().invoke(cli, [*args, "--stats"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "pool stats latency · concur-process (the last pool of the last run)" in out
    assert "pool stats latency · concur-thread (the last pool of the last run)" in out
    assert "pool stats latency · ThreadPoolExecutor" not in out  # it has no stats()
    # 50 warm-up calls and 30 timed ones, on the pool's one or two workers
    assert re.search(r"process pool: [12] worker\(s\) started, 80 task\(s\) done", out), out
    assert re.search(r"thread pool: [12] worker\(s\) started, 80 task\(s\) done", out), out
    assert "shut down: exited with code 0" in out
    assert "concur.bench.workloads.noop" in out  # the slowest tasks, by label
    plain = CliRunner().invoke(cli, args)
    assert plain.exit_code == 0, plain.output
    assert "pool stats" not in plain.output


def concur_cli(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``python -m concur ARGV`` run to its end in a subprocess (100 s at most)."""
    return subprocess.run(
        [sys.executable, "-m", "concur", *argv], capture_output=True, text=True, timeout=100
    )


@pytest.mark.timeout(120)
def test_one_cpu_runs_the_bench_on_one_cpu_and_says_so():
    argv = ["bench", "--one-cpu", "--quick", "--repeat", "1", "--scenario", "latency"]
    argv += ["--backend", "bare-pipe", "--backend", "concur-process"]
    done = concur_cli(argv)
    assert done.returncode == 0, done.stderr
    assert re.search(r"CPUs 1 usable of \d+", done.stdout), done.stdout
    assert "bare-pipe" in done.stdout
    assert "concur-pro" in done.stdout


@pytest.mark.timeout(120)
def test_bench_server_writes_only_its_results_to_stdout():
    """What ``make bench`` tees into docs/bench-server.txt: the tables, with
    the run's progress kept on stderr."""
    argv = ["bench-server", "--quick", "--repeat", "1", "--scenario", "sessions"]
    argv += ["--server", "concur-async", "--server", "asyncio"]
    done = concur_cli(argv)
    assert done.returncode == 0, done.stderr
    assert "sessions: 200 short sessions" in done.stdout
    assert "concur async" in done.stdout and "asyncio streams" in done.stdout
    assert " · concur async" not in done.stdout, done.stdout  # a progress line
