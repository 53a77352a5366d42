"""Progress bars for map and imap: on a terminal only, on stderr, via rich."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any


def say(text: str) -> None:
    """One line on stderr, above the bar while ``track`` draws one.

    The bar's console stands in for ``sys.stderr`` while it is drawn (rich's
    redirect), so the line is printed, as plain text, above the bar instead
    of into it; written to the stream's bytes (as ``click.echo`` does) it
    would land in the middle of the bar's line.
    """
    stream = sys.stderr  # looked up now: while a bar is drawn, rich's stand-in
    stream.write(text + "\n")
    stream.flush()


def track(results: Iterator[Any], total: int | None, label: Callable[[], str]) -> Iterator[Any]:
    """Yield ``results`` unchanged, drawing a bar while they come.

    Shows done/total (when the total is known), the rate, the time left and
    ``label()`` (the backend in use). Draws nothing when stderr is not a
    terminal, so logs and pipes stay clean. Print messages meanwhile with
    ``say``.
    """
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield from results
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label(), total=total, rate="")
        for count, value in enumerate(results, 1):
            speed = progress.tasks[0].speed
            progress.update(
                task,
                completed=count,
                description=label(),
                rate=f"{speed:,.0f} items/s" if speed else "",
            )
            yield value
        # The last results can arrive while the choice is still being made;
        # the final frame shows what the work ended up running on.
        progress.update(task, description=label())
