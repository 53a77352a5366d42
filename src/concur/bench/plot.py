"""The benchmark as a chart: one panel per scenario, one bar per backend.

Bars show the median, whiskers min and max, and each bar's value is written
past its whisker; a legend names the colours (concur's backends blue,
serial grey, the bare pipe dark grey, the peers orange). A panel whose
values span more than 20× uses a log scale so the small bars stay readable.
Backends whose library is not installed are left out and named in one line
at the foot. Needs matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

from .backends import BACKENDS
from .report import missing_line, not_installed
from .runner import SCENARIOS

COLORS = {"concur": "#1f6fb4", "serial": "#8c8c8c", "baseline": "#4d4d4d", "peer": "#e08a2c"}
LEGEND = {
    "concur": "concur",
    "serial": "serial (no pool)",
    "baseline": "bare pipe (the floor)",
    "peer": "other libraries",
}


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
    from matplotlib.patches import Patch

    shown = [r for r in rows if not not_installed(r)]
    scenarios = list(dict.fromkeys(r["scenario"] for r in shown))
    columns = min(3, len(scenarios))
    lines = math.ceil(len(scenarios) / columns)
    backends = list(dict.fromkeys(r["backend"] for r in shown))
    height = 0.32 * len(backends) + 1.3
    fig, axes = plt.subplots(
        lines, columns, figsize=(5.4 * columns, height * lines + 1.0), squeeze=False
    )
    for ax in axes.flat[len(scenarios) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, scenarios, strict=False):
        _panel(ax, name, [r for r in shown if r["scenario"] == name])
    gil = "GIL" if env["gil_enabled"] else "free-threaded"
    fig.suptitle(
        f"concur bench · {env['implementation']} {env['python']} ({gil}) · "
        f"{env['cpus_usable']} CPUs · start method {env['start_method']}",
        fontsize=12,
        y=1 - 0.12 / fig.get_figheight(),  # inches from the top, whatever the height
        va="top",
    )
    families = dict.fromkeys(BACKENDS[b].family for b in backends)
    handles = [Patch(color=COLORS[f], label=LEGEND[f]) for f in COLORS if f in families]
    fig.legend(
        handles=handles,
        loc="upper center",
        ncol=len(handles),
        bbox_to_anchor=(0.5, 1 - 0.42 / fig.get_figheight()),
        frameon=False,
        fontsize=9,
        title="bars: median of the runs · whiskers: fastest and slowest run",
        title_fontsize=8,
    )
    missing = missing_line(rows)
    if missing:
        fig.text(0.01, 0.005, textwrap.fill(missing, 180), fontsize=7, va="bottom")
    top = 1 - 1.05 / fig.get_figheight()
    bottom = 0.3 / fig.get_figheight() if missing else 0
    fig.tight_layout(rect=(0, bottom, 1, top))
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
    ax.barh(
        positions,
        medians,
        xerr=[lows, highs],
        color=colors,
        height=0.7,
        error_kw={"capsize": 2, "elinewidth": 0.8, "ecolor": "#333"},
    )
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
    log = bool(values) and max(values) / min(values) > 20 and not scenario.higher_is_better
    ends = [row["max"] for row in rows if row["max"] is not None]
    if log:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: no crowded labels
        if ends:
            ax.set_xlim(min(values) / 3, max(ends) * 6)  # room for the last label
    elif ends:
        ax.set_xlim(0, max(ends) * 1.22)
    for position, row in zip(positions, rows, strict=False):
        _label(ax, position, row, scenario.unit)


def _label(ax: Any, position: int, row: dict[str, Any], unit: str) -> None:
    """The bar's value just past its whisker, or why there is no bar."""
    if row["median"] is None:
        reason = (row["error"] or "").splitlines()[0]
        ax.text(
            0.01,
            position,
            textwrap.shorten("n/a: " + reason, 90, placeholder="…"),
            va="center",
            fontsize=6,
            color="#a33",
            transform=ax.get_yaxis_transform(),
        )
        return
    ax.annotate(
        value_label(row["median"], unit),
        (row["max"], position),
        xytext=(4, 0),
        textcoords="offset points",
        va="center",
        fontsize=7,
    )


def value_label(value: float, unit: str) -> str:
    """A value at a readable size: µs, ms or s for times, never "0 ms"."""
    if unit == "results":
        return f"{value:.0f}"
    if unit == "× size":
        return f"{value:.2f}×"
    seconds = value * 1e-6 if unit == "µs/call" else value
    scale, name = 1e-6, "µs"
    for bigger, called in ((1.0, "s"), (1e-3, "ms")):
        if seconds >= bigger:
            scale, name = bigger, called
            break
    shown = seconds / scale
    digits = 2 if shown < 1 or (name == "s" and shown < 10) else 1 if shown < 100 else 0
    return f"{shown:.{digits}f} {name}"
