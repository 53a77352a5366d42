"""The benchmark's output: the machine first, then one table per scenario, JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
import sysconfig
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._proc import cpu_count
from ..processes import default_start_method
from .backends import BACKENDS
from .runner import SCENARIOS, Result


def environment() -> dict[str, Any]:
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "build": " ".join(platform.python_build()),
        "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        "gil_enabled": gil,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpus_usable": cpu_count(),
        "start_method": default_start_method(),
    }


def print_environment(console: Console, env: dict[str, Any]) -> None:
    gil = "GIL enabled" if env["gil_enabled"] else "GIL disabled (free-threaded)"
    console.print(
        f"[bold]Python[/] {env['implementation']} {env['python']} ({env['build']}), {gil}\n"
        f"[bold]CPUs[/] {env['cpus_usable']} usable of {env['cpus']} · "
        f"[bold]start method[/] {env['start_method']} · {env['platform']}"
    )


def summarize(results: dict[tuple[str, str], Result]) -> list[dict[str, Any]]:
    """One row per (scenario, backend) with median, min, max and ratios."""
    rows = []
    for (scenario_name, backend_name), result in results.items():
        scenario = SCENARIOS[scenario_name]
        serial = results.get((scenario_name, "serial"))
        pipe = results.get((scenario_name, "bare-pipe"))
        kind = BACKENDS[backend_name].kind
        # Compare like with like: threads with thread peers, processes with
        # process peers; auto with every fixed choice, serial included.
        peers = [
            r.median
            for (s, b), r in results.items()
            if s == scenario_name
            and r.median is not None
            and _compared(kind, BACKENDS[b].family, BACKENDS[b].kind)
        ]
        median = result.median
        better = scenario.higher_is_better
        best_peer = (max(peers) if better else min(peers)) if peers else None
        row: dict[str, Any] = {
            "scenario": scenario_name,
            "backend": backend_name,
            "unit": scenario.unit,
            "median": median,
            "min": min(result.samples) if result.samples else None,
            "max": max(result.samples) if result.samples else None,
            "samples": result.samples,
            "error": result.error,
            # > 1 means better than serial / than the best peer.
            "vs_serial": _ratio_of(median, serial.median if serial else None, better),
            "vs_best_peer": _ratio_of(median, best_peer, better),
            # How many bare-pipe round trips this costs (latency): > 1 is slower.
            "x_pipe": _ratio_of(pipe.median if pipe else None, median, better),
        }
        rows.append(row)
    return rows


def _compared(kind: str, family: str, other_kind: str) -> bool:
    """Whether a backend of ``kind`` is compared with one of ``family`` and
    ``other_kind``: like with like, and auto with every fixed choice."""
    if kind == "auto" and family == "serial":
        return True
    return family == "peer" and (kind in ("none", "auto") or other_kind == kind)


def _ratio_of(value: float | None, other: float | None, higher_is_better: bool) -> float | None:
    if not value or not other:
        return None
    return value / other if higher_is_better else other / value


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "results":
        return f"{value:.0f}"
    if unit == "× size":
        return f"{value:.2f}"
    return f"{value:.1f}" if unit != "s" else f"{value:.3f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 10:
        return f"{value:.0f}×"
    return f"{value:.2f}×" if value >= 0.1 else f"{value:.4f}×"


def print_tables(console: Console, rows: list[dict[str, Any]]) -> None:
    for scenario_name in dict.fromkeys(r["scenario"] for r in rows):
        scenario = SCENARIOS[scenario_name]
        table = Table(title=f"{scenario_name}: {scenario.about}", title_justify="left")
        table.add_column("backend")
        table.add_column(f"median {scenario.unit}", justify="right")
        table.add_column("min", justify="right")
        table.add_column("max", justify="right")
        table.add_column("vs serial", justify="right")
        table.add_column("vs best peer", justify="right")
        these = [r for r in rows if r["scenario"] == scenario_name]
        piped = any(r["x_pipe"] is not None for r in these)
        if piped:
            table.add_column("× pipe", justify="right")
        notes: dict[str, list[str]] = {}  # why a backend has no numbers: its backends
        for row in these:
            if not_installed(row):
                continue  # summarised once, below the tables
            if row["error"] and not row["samples"]:
                reason = row["error"].splitlines()[0]
                notes.setdefault(reason, []).append(row["backend"])
                table.add_row(row["backend"], Text(reason.split(":")[0], style="red"))
                continue
            cells = [
                row["backend"],
                _num(row["median"], row["unit"]),
                _num(row["min"], row["unit"]),
                _num(row["max"], row["unit"]),
                _ratio(row["vs_serial"]),
                _ratio(row["vs_best_peer"]),
            ]
            table.add_row(*cells, *([_ratio(row["x_pipe"])] if piped else []))
        console.print(table)
        for reason, names in notes.items():
            # Text, not markup: a reason may quote brackets (an install hint, a repr).
            console.print(Text(f"{', '.join(names)}: {reason}", style="red"))
    missing = missing_line(rows)
    if missing:
        console.print(Text(missing))
    console.print(
        "Ratios divide medians from this run: above 1.00× means better than serial, "
        "or than the best peer of the same kind (threads vs threads, processes vs processes; "
        "auto vs every fixed choice, serial included). × pipe (latency): the round trip "
        "in bare-pipe round trips, the floor for any process pool here."
    )


def print_stats(console: Console, results: dict[tuple[str, str], Result]) -> None:
    """What each concur pool's workers did, for ``--stats``: per scenario and
    backend, the stats of the last pool its last run closed."""
    shown = [r for r in results.values() if r.pool_stats is not None]
    if not shown:
        console.print("no concur pool ran: no pool stats to show")
    for result in shown:
        console.print(
            f"[bold]pool stats[/] {result.scenario} · {result.backend} "
            "(the last pool of the last run)"
        )
        console.print(Text(result.pool_stats.table()), soft_wrap=True)


def not_installed(row: dict[str, Any]) -> bool:
    """A row of a backend whose library is missing (it ran nowhere)."""
    return not row["samples"] and BACKENDS[row["backend"]].unavailable() is not None


def missing_line(rows: list[dict[str, Any]]) -> str | None:
    """One line for every backend left out because its library is missing, with
    the command that installs each group; None when all were there."""
    hints: dict[str, list[str]] = {}
    for row in rows:
        backend = BACKENDS[row["backend"]]
        if not_installed(row) and row["backend"] not in hints.get(backend.install_hint(), []):
            hints.setdefault(backend.install_hint(), []).append(row["backend"])
    if not hints:
        return None
    parts = [f"{', '.join(names)} ({hint})" for hint, names in hints.items()]
    return "Not installed, so not run: " + "; ".join(parts) + "."


def print_left_out(console: Console) -> None:
    """What --quick does not run, and how to run it."""
    left = [name for name, backend in BACKENDS.items() if not backend.quick]
    console.print(
        Text(
            f"--quick leaves out {', '.join(left)} (each run starts a Dask cluster); "
            "add --backend NAME to run one."
        )
    )


def write_json(path: str, env: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"environment": env, "results": rows}, handle, indent=2)
        handle.write("\n")
