"""Progress bars for map and imap: on a terminal only, on stderr, via rich."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def track(results: Iterator[Any], total: int | None, label: Callable[[], str]) -> Iterator[Any]:
    """Yield ``results`` unchanged, drawing a bar while they come.

    Shows done/total (when the total is known), the rate, the time left and
    ``label()`` (the backend in use). Draws nothing when stderr is not a
    terminal, so logs and pipes stay clean.
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
