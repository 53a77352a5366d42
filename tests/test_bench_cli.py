"""The benchmark end to end at a tiny size, and the command line around it."""

from __future__ import annotations

import json
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
