"""The ``concur`` command. Thin: each subcommand parses options and calls the library."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="concur")
def cli() -> None:
    """concur: run work on processes and threads, safely, and see what happened."""


@cli.command()
@click.option("--quick", is_flag=True, help="Smaller work and 3 repeats: under a minute.")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    metavar="NAME",
    help="Run only this scenario (repeatable).",
)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    metavar="NAME",
    help="Run only this backend (repeatable).",
)
@click.option("--repeat", type=click.IntRange(min=1), help="Runs per scenario and backend.")
@click.option(
    "--scale",
    type=click.FloatRange(min=0.0001),
    default=1.0,
    show_default=True,
    help="Multiply the amount of work.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Write every measurement to this file.",
)
@click.option("--list", "list_only", is_flag=True, help="List scenarios and backends, then exit.")
def bench(
    quick: bool,
    scenarios: tuple[str, ...],
    backends: tuple[str, ...],
    repeat: int | None,
    scale: float,
    json_path: str | None,
    list_only: bool,
) -> None:
    """Time the seed's CPU-bound and IO-bound experiment (and more) on this machine."""
    from rich.console import Console

    from .bench import BenchConfig, report, run_bench
    from .bench.backends import BACKENDS
    from .bench.runner import SCENARIOS

    console = Console()
    if list_only:
        for name, scenario in SCENARIOS.items():
            console.print(f"scenario [bold]{name}[/]: {scenario.about}")
        for name, backend in BACKENDS.items():
            console.print(f"backend  [bold]{name}[/] ({backend.family})")
        return
    env = report.environment()
    report.print_environment(console, env)
    cfg = BenchConfig(
        quick=quick, scenarios=scenarios, backends=backends, repeat=repeat, scale=scale
    )
    err = Console(stderr=True)
    try:
        with err.status("running") as status:
            results = run_bench(cfg, progress=lambda text: status.update(text))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    rows = report.summarize(results)
    report.print_tables(console, rows)
    if json_path:
        report.write_json(json_path, env, rows)
        console.print(f"measurements written to {json_path}")


def main() -> None:
    cli(prog_name="concur")


if __name__ == "__main__":  # pragma: no cover
    main()
