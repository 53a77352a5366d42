"""Progress bars for map and imap (``concur.map`` and every pool's), via rich:
on stderr when it is a terminal, in the cell's output in a Jupyter
notebook, and nowhere else, so logs, pipes and files stay clean."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Callable, Generator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

_WIDGETS_HINT = (
    "concur draws progress bars in a notebook with ipywidgets, which is not "
    "installed: pip install ipywidgets (then restart the kernel) to see them"
)


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


def widgets_available() -> bool:
    """Whether ipywidgets, which rich draws a live bar in a notebook with, is installed."""
    return importlib.util.find_spec("ipywidgets") is not None


def bar_console() -> Console | None:
    """The console a bar can be seen on, or None when there is none.

    stderr when it is a terminal (rich's test: ``isatty``, or
    ``FORCE_COLOR``/``TTY_COMPATIBLE`` set); in a Jupyter notebook (rich's
    test: the IPython kernel's shell, Colab, Databricks), the notebook, when
    ipywidgets is installed (a warning says to install it when it is not).
    A pipe or a file gets nothing.
    """
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal:
        return console
    if console.is_jupyter:
        if widgets_available():
            return console
        warnings.warn(_WIDGETS_HINT, RuntimeWarning, stacklevel=2)
    return None


class Bar:
    """One bar, from ``start()`` to ``stop()`` (or while a ``with`` lasts):
    ``advance()`` counts one result.

    Shows done/total, the share done and the time left when the total is
    known; the count and the time so far when it is not (endless input);
    the rate, and ``label()`` (where the work runs). Draws nothing where
    ``bar_console`` finds no console.
    """

    def __init__(self, total: int | None, label: Callable[[], str]) -> None:
        self.total = total
        self.label = label
        self.count = 0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self) -> None:
        console = bar_console()
        if console is not None:
            self._progress = _progress(console, self.total is not None)
            self._progress.start()
            self._task = self._progress.add_task(self.label(), total=self.total, rate="")

    def advance(self) -> None:
        self.count += 1
        if self._progress is None or self._task is None:
            return
        speed = self._progress.tasks[0].speed
        self._progress.update(
            self._task,
            completed=self.count,
            description=self.label(),
            rate=f"{speed:,.0f} items/s" if speed else "",
        )

    def stop(self) -> None:
        """The last frame, left on the screen; nothing more is drawn after it."""
        progress, self._progress = self._progress, None
        if progress is None or self._task is None:
            return
        # The last results can arrive while the choice is still being made;
        # the final frame shows what the work ended up running on.
        progress.update(self._task, description=self.label())
        progress.stop()

    def __enter__(self) -> Bar:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _progress(console: Console, total_known: bool) -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[ProgressColumn]
    if total_known:
        columns = [BarColumn(), MofNCompleteColumn(), TaskProgressColumn()]
    else:
        columns = [TextColumn("{task.completed:,.0f} done")]
    columns = [TextColumn("{task.description}"), *columns, TextColumn("{task.fields[rate]}")]
    columns.append(TimeRemainingColumn() if total_known else TimeElapsedColumn())
    return Progress(*columns, console=console, transient=False)


def track(
    results: Iterator[Any], total: int | None, label: Callable[[], str]
) -> Generator[Any, None, None]:
    """Yield ``results`` unchanged, drawing a ``Bar`` while they come.
    Print messages meanwhile with ``say``."""
    with Bar(total, label) as bar:
        for value in results:
            bar.advance()
            yield value


class Shown(Iterator[Any]):
    """``results`` as ``track`` yields them, for a pool's ``map`` and
    ``imap``: ``close()`` ends the bar and the run, and other attributes (an
    AutoPool run's ``decision``) are the run's own."""

    def __init__(self, results: Iterator[Any], total: int | None, label: Callable[[], str]):
        self._results = results
        self._shown = track(results, total, label)

    def __iter__(self) -> Shown:
        return self

    def __next__(self) -> Any:
        return next(self._shown)

    def close(self) -> None:
        self._shown.close()
        close = getattr(self._results, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._results, name)
