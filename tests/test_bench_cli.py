"""The benchmark end to end at a tiny size, and the command line around it."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from concur.bench.backends import BACKENDS
from concur.bench.runner import SCENARIOS
from concur.cli import cli


def test_bench_writes_every_scenario_and_backend_to_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        cli, ["bench", "--quick", "--repeat", "1", "--scale", "0.01", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "CPUs" in result.output
    assert "start method" in result.output
    data = json.loads(out.read_text())
    pairs = {(row["scenario"], row["backend"]) for row in data["results"]}
    assert pairs == {(s, b) for s in SCENARIOS for b in BACKENDS}
    for row in data["results"]:
        assert row["error"] is None, row
        assert row["median"] > 0
    assert data["environment"]["cpus"] >= 1


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
