"""The ``concur`` command. Thin: each subcommand parses options and calls the library."""

from __future__ import annotations

import os
import sys
from typing import IO, Any, cast

import click

from . import __version__
from ._backends import BACKENDS
from ._maplines import input_lines, load_target, print_results, read_lines, regular_file


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="concur")
def cli() -> None:
    """concur: run work on processes and threads, safely, and see what happened."""


@cli.command()
@click.option(
    "--quick",
    is_flag=True,
    help="Smaller work, fewer scenarios, no Dask, 2 repeats: under a minute.",
)
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
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE.png",
    help="Draw a chart of the results (needs concur[plot]).",
)
@click.option(
    "--stats",
    "show_stats",
    is_flag=True,
    help="Then print what the concur pools' workers did (pool.stats()).",
)
@click.option(
    "--one-cpu",
    is_flag=True,
    help="Run everything on one CPU: a round trip then costs what its two ends compute.",
)
@click.option("--list", "list_only", is_flag=True, help="List scenarios and backends, then exit.")
def bench(
    quick: bool,
    scenarios: tuple[str, ...],
    backends: tuple[str, ...],
    repeat: int | None,
    scale: float,
    json_path: str | None,
    plot_path: str | None,
    show_stats: bool,
    one_cpu: bool,
    list_only: bool,
) -> None:
    """Time the seed's CPU-bound and IO-bound experiment (and more) on this machine.

    Every selected scenario runs on every selected backend, alternating
    backends within each repeat; the table gives median, min and max, and
    ratios to serial and to the best peer. --quick runs smaller work on a
    subset of the scenarios, without the Dask backends, in under a minute.
    --stats prints, for each scenario and concur backend, the stats of the
    last pool its last run used: start-up, working and idle time per worker,
    and the slowest tasks. --one-cpu runs it all on one CPU (Linux): no
    wake-up of another CPU, slow on some virtual machines, hides CPU time.
    """
    from rich.console import Console

    from .bench import BenchConfig, report, run_bench

    console = Console()
    if list_only:
        _list_bench(console)
        return
    if one_cpu:
        _run_on_one_cpu()
    if plot_path:
        _require_plotting()
    env = report.environment()
    report.print_environment(console, env)
    cfg = BenchConfig(quick, scenarios, backends, repeat, scale, stats=show_stats)
    err = Console(stderr=True)
    try:
        with err.status("running") as status:
            results = run_bench(cfg, progress=lambda text: status.update(text))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    rows = report.summarize(results)
    report.print_tables(console, rows)
    if quick and not backends:
        report.print_left_out(console)
    if show_stats:
        report.print_stats(console, results)
    if json_path:
        report.write_json(json_path, env, rows)
        console.print(f"measurements written to {json_path}")
    if plot_path:
        _draw(console, plot_path, env, rows)


def _draw(console: Any, plot_path: str, env: Any, rows: Any) -> None:
    from .bench.plot import draw

    draw(plot_path, env, rows)
    console.print(f"chart written to {plot_path}")


def _run_on_one_cpu() -> None:
    """Pin this process (and so every thread and process it starts) to one CPU."""
    try:
        cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(cpus)})
    except (AttributeError, OSError) as exc:
        raise click.UsageError(f"--one-cpu needs a system that can pin processes: {exc}") from None


def _list_bench(console: Any) -> None:
    from .bench.backends import BACKENDS
    from .bench.runner import SCENARIOS

    for name, scenario in SCENARIOS.items():
        console.print(f"scenario [bold]{name}[/]: {scenario.about}")
    for name, backend in BACKENDS.items():
        console.print(f"backend  [bold]{name}[/] ({backend.family})")


def _require_plotting() -> None:
    from .bench.plot import require_matplotlib

    try:
        require_matplotlib()
    except ImportError as exc:
        raise click.UsageError(str(exc)) from None


BACKEND_CHOICE = click.Choice(list(BACKENDS))


@cli.command("map")
@click.argument("target", metavar="MODULE:FUNCTION")
@click.argument("source", type=click.File("r"), default="-", metavar="[FILE|-]")
@click.option("--backend", type=BACKEND_CHOICE, default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(min=1), help="Workers (default: decided).")
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="With --backend dask: the Dask scheduler to use (default: DASK_SCHEDULER_ADDRESS, "
    "else a local cluster).",
)
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed line (exit 1).")
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="A progress bar on stderr, when it is a terminal.",
)
def map_command(
    target: str,
    source: IO[str],
    backend: str,
    workers: int | None,
    scheduler: str | None,
    fail_fast: bool,
    progress: bool,
) -> None:
    """Run FUNCTION on each line of FILE (or stdin); print one JSON result per line.

    Results come in input order. A line whose call fails prints
    {"error": ..., "line": N} in its place and a message on stderr; the other
    lines go on (--fail-fast stops, naming the line). Exit status 1 if any
    line failed. On a terminal a progress bar shows lines done of the total (a
    file's lines are counted first), with the messages printed above it.

    \b
    MODULE is looked up among the installed modules first, then in the current
    directory, so a file there never replaces one concur or Python uses.
    """
    from . import api

    fn = load_target(target)
    if scheduler is not None:
        if backend != "dask":
            raise click.BadParameter(
                "--scheduler goes with --backend dask", param_hint="--scheduler"
            )
        os.environ["DASK_SCHEDULER_ADDRESS"] = scheduler
    results = api.imap(
        fn,
        input_lines(source),
        backend=cast(api.Backend, backend),
        workers=workers,
        return_exceptions=not fail_fast,
        progress=progress,
    )
    failed = print_results(results)
    decision = results.decision
    if decision is not None:
        click.echo(f"concur map: {decision}", err=True)
    if failed:
        click.echo(f"concur map: {failed} line(s) failed", err=True)
        sys.exit(1)


@cli.command()
@click.argument("target", metavar="MODULE:FUNCTION")
@click.argument("source", type=click.File("r"), default="-", metavar="[FILE|-]")
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="How many lines to run to decide.",
)
@click.option(
    "--items",
    type=click.IntRange(min=1),
    default=None,
    help="Decide for a run of this many lines "
    "[default: every line of FILE; a long run for standard input].",
)
def advise(target: str, source: IO[str], sample: int, items: int | None) -> None:
    """Run FUNCTION on the first lines of FILE and print where concur would run it, and why.

    \b
    MODULE is looked up among the installed modules first, then in the current
    directory, so a file there never replaces one concur or Python uses.
    """
    import itertools

    from .auto import advise as advise_fn

    fn = load_target(target)
    lines_in = read_lines(source)
    lines = list(itertools.islice(lines_in, sample))
    if not lines:
        raise click.UsageError("no input lines to measure")
    if items is None and regular_file(source):
        items = len(lines) + sum(1 for _ in lines_in)  # the whole file
    decision = advise_fn(fn, lines, items=items)
    m = decision.measurements
    click.echo(f"backend:   {decision.backend}")
    click.echo(f"workers:   {decision.workers}")
    click.echo(f"chunksize: {decision.chunksize}")
    click.echo(f"for:       {f'{items:,} items' if items else 'a long run'}")
    click.echo(f"reason:    {decision.reason}")
    click.echo(
        f"measured:  {m.items} items; per item {m.wall * 1e3:.3f} ms wall, "
        f"{m.cpu * 1e3:.3f} ms CPU, {m.transfer * 1e6:.1f} µs to pickle; "
        f"{m.cores} cores; GIL {'on' if m.gil else 'off'}"
    )
    for warning in decision.warnings:
        click.echo(f"warning:   {warning}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--model",
    type=click.Choice(["thread", "async", "process", "prefork", "hybrid"]),
    default="async",
    show_default=True,
    help="How connections are served (see docs/server.md).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes: prefork (default 2 per core + 1), hybrid (1 per core), "
    "process (spares kept ready; 1 per core).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Threads per event loop (async, hybrid) for handlers that block.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Sessions at once; the next client gets a busy reply.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.001),
    default=300.0,
    show_default=True,
    help="Seconds a silent client may stay connected.",
)
@click.option(
    "--max-message",
    type=click.IntRange(min=1),
    default=64 * 1024,
    show_default=True,
    help="Longest line, in characters; a longer one gets an error and a close.",
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="process, prefork: seconds a client may wait for a free process before "
    "the busy reply (meanwhile a connection silent for 1 s gives way).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="On SIGINT/SIGTERM, seconds open sessions get to finish; "
    "a second Ctrl-C closes them at once.",
)
def serve(
    host: str,
    port: int,
    model: str,
    workers: int | None,
    threads: int,
    max_connections: int,
    idle_timeout: float,
    max_message: int,
    queue_timeout: float,
    grace: float,
) -> None:
    """Serve the uppercase service (the seed's server) until SIGINT or SIGTERM."""
    import logging

    from .server import serve as serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        code = serve_forever(
            grace=grace,
            host=host,
            port=port,
            model=model,
            workers=workers,
            threads=threads,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            max_message=max_message,
            queue_timeout=queue_timeout,
        )
    except OSError as exc:
        message = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise click.ClickException(message) from None
    sys.exit(code)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--connections",
    "-c",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Clients at once.",
)
@click.option(
    "--messages",
    "-m",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Messages per connection.",
)
@click.option(
    "--sessions",
    "-s",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Instead: this many short sessions (one message, then q), --connections at a time.",
)
@click.option("--timeout", type=click.FloatRange(min=0.001), default=10.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def load(
    host: str,
    port: int,
    connections: int,
    messages: int,
    sessions: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Load an uppercase server, check every reply, report rates and latency.

    Exits 1 when any reply was wrong or missing.
    """
    import json

    from .server.load import run_load

    report = run_load(host, port, connections, messages, sessions, timeout)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(report.summary())
        for sample in report.samples:
            click.echo(f"  error: {sample}", err=True)
    sys.exit(1 if report.errors else 0)


@cli.command("bench-server")
@click.option("--quick", is_flag=True, help="Small sizes: about a minute.")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(["messages", "sessions", "idle"]),
    help="Run only these (repeatable).",
)
@click.option("--server", "servers", multiple=True, help="Run only these servers (repeatable).")
@click.option("--repeat", type=click.IntRange(min=1), default=None, help="Runs of each.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every run.")
def bench_server(
    quick: bool,
    scenarios: tuple[str, ...],
    servers: tuple[str, ...],
    repeat: int | None,
    json_path: str | None,
) -> None:
    """Benchmark the server models against socketserver and asyncio."""
    from rich.console import Console

    from .bench import servers as bench
    from .bench.report import environment, print_environment

    unknown = sorted(set(servers) - set(bench.SERVERS))
    if unknown:
        raise click.BadParameter(
            f"unknown server {', '.join(unknown)}; choose from {', '.join(bench.SERVERS)}",
            param_hint="--server",
        )
    console = Console(width=110)
    env = environment()
    print_environment(console, env)
    sizes = bench.QUICK if quick else bench.FULL
    chosen = list(servers) or list(bench.SERVERS)
    with Console(stderr=True).status("running") as status:
        measures = bench.run(
            sizes,
            chosen,
            list(scenarios) or list(bench.SCENARIOS),
            repeat or (1 if quick else 3),
            progress=lambda what: status.update(what),
        )
    rows = bench.summarize(measures)
    bench.print_tables(console, rows, sizes)
    if json_path:
        bench.write_json(json_path, env, sizes, rows)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
def client(host: str, port: int) -> None:
    """Type text, get it back from the server; q quits."""
    from .server.client import main as client_main

    sys.exit(client_main(host, port))


@cli.command()
@click.argument("pid", type=int, required=False)
@click.option("--watch", is_flag=True, help="Refresh in place every --interval seconds.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--threads", "with_threads", is_flag=True, help="List each process's threads.")
def ps(pid: int | None, watch: bool, interval: float, as_json: bool, with_threads: bool) -> None:
    """Show the process tree of concur programs (or of PID): roles, states,
    CPU, memory, threads and the task each worker runs; zombies and orphans
    are flagged with what they mean and what to do."""
    import json
    import time

    import psutil
    from rich.console import Console
    from rich.live import Live

    from . import ps as facts

    if pid is not None and not psutil.pid_exists(pid):
        raise click.BadParameter(f"no process has pid {pid}", param_hint="PID")
    facts.snapshot(pid, with_threads)  # CPU % is measured between two snapshots
    time.sleep(0.2)
    rows = facts.snapshot(pid, with_threads)
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    if not watch:
        console.print(facts.render(rows))
        return
    with Live(facts.render(rows), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(facts.render(facts.snapshot(pid, with_threads)), refresh=True)
        except KeyboardInterrupt:
            pass


def main() -> None:
    cli(prog_name="concur")


if __name__ == "__main__":  # pragma: no cover
    main()
