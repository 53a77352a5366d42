"""The benchmark as a chart: one panel per scenario, one bar per backend.

Bars show the median, whiskers min and max; concur's backends are blue,
serial grey, the peers orange. A panel whose values span more than 20× uses
a log scale so the small bars stay readable. Needs matplotlib (the ``plot``
extra).
"""

from __future__ import annotations

import math
from typing import Any

from .backends import BACKENDS
from .runner import SCENARIOS

COLORS = {"concur": "#1f6fb4", "serial": "#8c8c8c", "baseline": "#4d4d4d", "peer": "#e08a2c"}


def require_matplotlib() -> None:
    """Raise ImportError with the fix when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(
            "concur bench --plot needs matplotlib: pip install 'concur[plot]'"
        ) from None


def draw(path: str, env: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    columns = min(3, len(scenarios))
    lines = math.ceil(len(scenarios) / columns)
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    height = 0.32 * len(backends) + 1.2
    fig, axes = plt.subplots(lines, columns, figsize=(5.2 * columns, height * lines), squeeze=False)
    for ax in axes.flat[len(scenarios) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, scenarios, strict=False):
        _panel(ax, name, [r for r in rows if r["scenario"] == name])
    gil = "GIL" if env["gil_enabled"] else "free-threaded"
    fig.suptitle(
        f"concur bench · {env['implementation']} {env['python']} ({gil}) · "
        f"{env['cpus_usable']} CPUs · start method {env['start_method']}",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panel(ax: Any, name: str, rows: list[dict[str, Any]]) -> None:
    scenario = SCENARIOS[name]
    labels, medians, lows, highs, colors = [], [], [], [], []
    for row in rows:
        labels.append(row["backend"])
        colors.append(COLORS[BACKENDS[row["backend"]].family])
        median = row["median"]
        medians.append(median if median is not None else 0.0)
        lows.append(median - row["min"] if median is not None else 0.0)
        highs.append(row["max"] - median if median is not None else 0.0)
    positions = list(range(len(labels)))
    ax.barh(positions, medians, xerr=[lows, highs], color=colors, capsize=2, height=0.7)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.invert_yaxis()
    better = "more is better" if scenario.higher_is_better else "less is better"
    unit = {
        "s": "seconds",
        "µs/call": "µs per call",
        "results": "results",
        "× size": "peak rise, in result sizes",
    }[scenario.unit]
    ax.set_xlabel(f"{unit} ({better})", fontsize=8)
    ax.set_title(name, fontsize=10, loc="left")
    ax.tick_params(axis="x", labelsize=7)
    values = [v for v in medians if v > 0]
    if values and max(values) / min(values) > 20 and not scenario.higher_is_better:
        ax.set_xscale("log")
    for position, row in zip(positions, rows, strict=False):
        if row["median"] is None:
            text = "n/a: " + (row["error"] or "").splitlines()[0][:40]
            ax.text(
                0.01,
                position,
                text,
                va="center",
                fontsize=6,
                color="#a33",
                transform=ax.get_yaxis_transform(),
            )
        else:
            ax.text(
                row["median"],
                position,
                f" {_short(row['median'], scenario.unit)}",
                va="center",
                fontsize=6,
            )


def _short(value: float, unit: str) -> str:
    if unit == "results":
        return f"{value:.0f}"
    if unit == "µs/call":
        return f"{value:.0f} µs"
    if unit == "× size":
        return f"{value:.2f}×"
    return f"{value * 1e3:.0f} ms" if value < 1 else f"{value:.2f} s"
