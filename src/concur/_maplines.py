"""What ``concur map`` and ``concur advise`` share: the function named
MODULE:FUNCTION, the lines of FILE or stdin, and the results as JSON lines."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import click


def load_target(target: str) -> Callable[..., Any]:
    """MODULE:FUNCTION → the function, from the installed modules, then the current directory.

    The directory goes at the end of ``sys.path``: a file in it named like a
    module of the standard library or of concur's dependencies (colorsys.py,
    click.py) is never imported in its place, here or in the workers, which
    start with this ``sys.path``.
    """
    import importlib

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(
            f"{target!r} is not MODULE:FUNCTION (for example: mytools:parse_line)",
            param_hint="TARGET",
        )
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(
            f"cannot import {module_name!r}: {exc}", param_hint="TARGET"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise click.BadParameter(
                f"{module_name!r} has no {attr!r}", param_hint="TARGET"
            ) from None
    if not callable(obj):
        raise click.BadParameter(f"{target} is not callable", param_hint="TARGET")
    return obj  # type: ignore[no-any-return]


def read_lines(source: IO[str]) -> Iterator[str]:
    for line in source:
        yield line.rstrip("\n").rstrip("\r")


class FileLines:
    """The lines of a file on disk, and how many there are: a progress bar
    shows done/total, and auto decides for the whole file."""

    def __init__(self, source: IO[str]) -> None:
        start = source.tell()
        self._count = sum(1 for _ in source)
        source.seek(start)
        self._source = source

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        return read_lines(self._source)


def input_lines(source: IO[str]) -> Iterable[str]:
    """The lines of FILE or stdin: counted first when it is a file on disk."""
    return FileLines(source) if regular_file(source) else read_lines(source)


def regular_file(source: IO[str]) -> bool:
    """A file on disk (also as redirected standard input), not a pipe or terminal."""
    import stat

    try:
        return stat.S_ISREG(os.fstat(source.fileno()).st_mode)
    except (OSError, ValueError):
        return False


def _jsonable(value: Any) -> Any:
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def print_results(results: Any) -> int:
    """One JSON line per result of ``concur map``; the number of lines that failed.

    Exits 1 at the first failure when ``results`` raises (--fail-fast).
    """
    import json

    from ._progress import say

    failed = number = 0
    try:
        for number, value in enumerate(results, 1):
            if isinstance(value, BaseException):
                failed += 1
                message = f"{type(value).__name__}: {value}"
                say(f"concur map: line {number}: {message}")
                click.echo(json.dumps({"error": message, "line": number}))
            else:
                click.echo(json.dumps(_jsonable(value)))
    except Exception as exc:
        results.close()
        # Results come in input order: the one that raised is the next line.
        say(
            f"concur map: stopped at line {number + 1}, the first failure: "
            f"{type(exc).__name__}: {exc}"
        )
        sys.exit(1)
    return failed
