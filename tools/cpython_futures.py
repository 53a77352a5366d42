"""Run CPython's own concurrent.futures test suite against concur's pools.

    python tools/cpython_futures.py [-v] [-k PATTERN ...] [--suite PATH]

The suite is the running interpreter's own: ``test.test_concurrent_futures``,
one module up to 3.11, a package from 3.12 on. It is imported as it is, then
wherever it picks an executor type the standard library's is swapped for
concur's:

* the mixins' ``executor_type`` (``ThreadPoolMixin``, ``ProcessPool*Mixin``);
* the name ``futures`` in each of the suite's modules, which the tests use
  for ``futures.ThreadPoolExecutor(...)`` / ``futures.ProcessPoolExecutor(...)``:
  it is rebound to a view of ``concurrent.futures`` whose two executor names
  are concur's and whose every other name (``wait``, ``process``,
  ``TimeoutError`` ...) is the real module's;
* ``assert_python_ok``, for the tests that run a script in a child
  interpreter: the script's ``from concurrent.futures import X`` of an
  executor imports concur's instead, and the child gets concur (and the suite,
  when it does not come with the interpreter) on its PYTHONPATH.

``concurrent.futures`` itself is left alone: concur builds on it (its errors
subclass ``BrokenProcessPool`` and friends, its futures are its ``Future``).

Some interpreters are installed without their test suite (a Debian
``python3.11`` keeps it in the ``libpython3.11-testsuite`` package, which
``apt-get download`` fetches without installing; some builds lack it).
Then ``--suite`` names a ``test_concurrent_futures.py`` file or
``test_concurrent_futures/`` folder of the same minor version, or the runner
finds one under ``/usr/lib/python3.X/test/``; it is made importable as
``test.test_concurrent_futures`` (worker processes and child interpreters
too) through a small overlay of the ``test`` package in a temporary folder.

Every failure and error must match a pattern in ``EXPECTED`` (fnmatch on
``Class.test_method``), or the run exits 1. The end of the output lists each
failure with its reason, and expected entries that did not fail.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import importlib
import os
import re
import sys
import sysconfig
import tempfile
import time
import types
import unittest

# {pattern on "Class.test_method": why it fails against concur}. Only what
# concur cannot or deliberately does not match belongs here: tests that read
# a stdlib executor's private attributes or patch its internals, and
# documented differences. A concur defect stays out, so the run fails until
# it is fixed. (fnmatch: "ProcessPoolFork*" also matches "ProcessPoolForkserver...".)
_MANAGER = "reads executor._executor_manager_thread, a ProcessPoolExecutor private attribute"
_ASYNC_START = (
    "concur starts workers from its supervisor thread after submit() returns (the stdlib "
    "starts them inside submit()), so len(executor._processes) right after the submits is "
    "smaller than the test wants; the workers do start, and the tasks complete"
)
EXPECTED: dict[str, str] = {
    # -- private attributes of the stdlib executors that concur does not have
    "ProcessPool*ProcessPoolShutdownTest.test_del_shutdown": _MANAGER,
    "ProcessPool*ExecutorDeadlockTest.test_shutdown_deadlock_pickle": _MANAGER,
    "ProcessPool*ProcessPoolShutdownTest.test_shutdown_no_wait": "reads executor._call_queue, "
    "a ProcessPoolExecutor private attribute",
    # -- worker start timing
    "ProcessPool*ProcessPoolExecutorTest.test_saturation": _ASYNC_START,
    "ProcessPool*ProcessPoolShutdownTest.test_processes_terminate": _ASYNC_START,
    "ProcessPool*ProcessPoolExecutorTest.test_killed_child": "by design a killed worker "
    "fails only its task (WorkerCrashed, a BrokenProcessPool): the pool goes on, so the "
    "later submit() does not raise",
    "ThreadPoolShutdownTest.test_thread_names_default": "concur's default thread names are "
    "concur-ThreadPool-N_i, not ThreadPoolExecutor-N_i",
    # -- stdlib internals
    "ProcessPool*ProcessPoolExecutorTest.test_python_finalization_error": "mocks "
    "threading._start_joinable_thread to fail the stdlib executor's second thread "
    "(its queue feeder) and expects BrokenProcessPool; concur starts one thread, so "
    "under forkserver/spawn the tasks run and raise the test's own mul((2, 3)) TypeError "
    "(under fork the worker inherits the mock and crashes: WorkerCrashed, a pass by accident)",
    # -- documented differences
    "ProcessPool*ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": (
        "concur's default start method is forkserver on Linux, with or without "
        "max_tasks_per_child (processes.default_start_method); the stdlib picks spawn"
    ),
    "ProcessPool*ExecutorDeadlockTest.test_e*_at_task_unpickle": "a task the worker "
    "cannot unpickle (an error or SystemExit while loading it) fails only that future, "
    "with SerializationError (a PicklingError); the stdlib breaks the whole pool with "
    "BrokenProcessPool",
    "ProcessPool*ExecutorDeadlockTest.test_e*_during_result_unpickle_in_result_handler": (
        "a result the parent cannot unpickle (an error or SystemExit while loading it) fails "
        "only that future, with SerializationError; the stdlib breaks the whole pool with "
        "BrokenProcessPool"
    ),
    "ProcessPoolForkProcessPoolExecutorTest.test_max_tasks_per_child": "concur accepts "
    "max_tasks_per_child with fork (its supervisor forks replacement workers for crashes "
    "anyway); the stdlib raises ValueError",
    "ProcessPool*ProcessPoolShutdownTest.test_cancel_futures": "timing: concur starts "
    "workers from its supervisor thread after submit() returns and hands a task over "
    "only to a live idle worker, so shutdown(cancel_futures=True) right after 50 "
    "submits usually finds none started and cancels all 50 (the documented meaning); "
    "the test wants at least one to have run, as the stdlib's call queue makes happen",
}

# Tests not run at all (pattern: why), for a test that would hang after
# failing and cost the watchdog's whole timeout on each run. None today.
NOT_RUN: dict[str, str] = {}

SUITE = "test.test_concurrent_futures"


# -- finding and importing the suite -------------------------------------------


def _stdlib_test_dir() -> str:
    return os.path.join(sysconfig.get_path("stdlib"), "test")


def _find_suite(explicit: str | None) -> str | None:
    """Path of a suite to overlay, or None when the interpreter has its own."""
    if explicit:
        path = os.path.abspath(explicit)
        if not os.path.exists(path):
            sys.exit(f"--suite {explicit}: no such file or folder")
        return path
    for name in ("test_concurrent_futures", "test_concurrent_futures.py"):
        if os.path.exists(os.path.join(_stdlib_test_dir(), name)):
            return None
    minor = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for base in (f"/usr/lib/{minor}/test", f"/usr/local/lib/{minor}/test"):
        for name in ("test_concurrent_futures", "test_concurrent_futures.py"):
            candidate = os.path.join(base, name)
            if os.path.exists(candidate) and os.path.realpath(base) != os.path.realpath(
                _stdlib_test_dir()
            ):
                return candidate
    sys.exit(
        f"This interpreter ({sys.executable}) has no {SUITE}: pass --suite PATH to a "
        f"test_concurrent_futures.py / test_concurrent_futures/ of Python "
        f"{sys.version_info[0]}.{sys.version_info[1]} (on Debian: the "
        f"libpython{sys.version_info[0]}.{sys.version_info[1]}-testsuite package)."
    )


def _make_overlay(suite: str) -> str:
    """A folder with a ``test`` package that is the stdlib's plus the suite."""
    root = tempfile.mkdtemp(prefix="cpython-futures-")
    package = os.path.join(root, "test")
    os.mkdir(package)
    with open(os.path.join(package, "__init__.py"), "w") as f:
        f.write(
            "# The stdlib's test package, with test_concurrent_futures added.\n"
            f"__path__.append({_stdlib_test_dir()!r})\n"
        )
    os.symlink(suite, os.path.join(package, os.path.basename(suite)))
    return root


def _suite_modules() -> list[types.ModuleType]:
    """The suite's modules: the one module, or every module of the package."""
    top = importlib.import_module(SUITE)
    if not hasattr(top, "__path__"):
        return [top]
    import pkgutil

    names = sorted(info.name for info in pkgutil.iter_modules(top.__path__))
    return [top] + [importlib.import_module(f"{SUITE}.{name}") for name in names]


# -- substituting concur's executors -------------------------------------------


class _FuturesView(types.ModuleType):
    """``concurrent.futures`` as the suite sees it: concur's two executors."""

    def __init__(self, real: types.ModuleType, overrides: dict[str, object]) -> None:
        super().__init__(real.__name__, real.__doc__)
        self.__dict__.update(overrides)
        self.__dict__["_real"] = real

    def __getattr__(self, name: str) -> object:
        return getattr(self.__dict__["_real"], name)


_IMPORT = re.compile(r"from concurrent\.futures import (\w+)\b")


def _substitute(modules: list[types.ModuleType], env: dict[str, str]) -> list[str]:
    """Point the suite at concur; returns what was changed, for the header."""
    import concurrent.futures as cf

    import concur

    swap: dict[object, object] = {
        cf.ThreadPoolExecutor: concur.ThreadPool,
        cf.ProcessPoolExecutor: concur.ProcessPool,
    }
    names = {
        "ThreadPoolExecutor": concur.ThreadPool,
        "ProcessPoolExecutor": concur.ProcessPool,
    }
    view = _FuturesView(cf, names)
    by_name = {"ThreadPool": "ThreadPool", "ProcessPool": "ProcessPool"}
    by_name.update({"ThreadPoolExecutor": "ThreadPool", "ProcessPoolExecutor": "ProcessPool"})

    def rewrite(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in by_name:
            return match.group(0)
        ours = by_name[name]
        return f"from concur import {ours}" + ("" if ours == name else f" as {name}")

    changed: list[str] = []
    for module in modules:
        short = module.__name__.rpartition(".")[2]
        for attr, value in list(vars(module).items()):
            if value is cf:
                setattr(module, attr, view)
                changed.append(f"{short}.{attr} -> view of concurrent.futures")
            elif isinstance(value, type):
                if attr in names and value in swap:  # a directly imported executor
                    setattr(module, attr, swap[value])
                    changed.append(f"{short}.{attr} -> concur")
                elif swap.get(value.__dict__.get("executor_type")) is not None:
                    value.executor_type = swap[value.__dict__["executor_type"]]
                    where = value.__module__.rpartition(".")[2]
                    changed.append(f"{where}.{value.__qualname__}.executor_type -> concur")
            elif attr in ("assert_python_ok", "assert_python_failure") and callable(value):
                setattr(module, attr, _child_runner(value, rewrite, env))
                changed.append(f"{short}.{attr}: child scripts import concur")
    return changed


def _child_runner(original, rewrite, env):  # type: ignore[no-untyped-def]
    def run(*args, **env_vars):  # type: ignore[no-untyped-def]
        args = list(args)
        if "-c" in args:
            at = args.index("-c") + 1
            args[at] = _IMPORT.sub(rewrite, args[at])
        for key, value in env.items():
            env_vars.setdefault(key, value)
        return original(*args, **env_vars)

    run.__wrapped__ = original  # type: ignore[attr-defined]
    return run


# -- running and reporting -----------------------------------------------------


def short_id(test: unittest.TestCase) -> str:
    case = getattr(test, "test_case", test)  # a subTest's parent
    method = getattr(case, "_testMethodName", None)
    if method is None:  # a module or class fixture's _ErrorHolder
        return str(test)
    return f"{type(case).__name__}.{method}"


def expected_reason(test_id: str) -> str | None:
    for pattern, reason in EXPECTED.items():
        if fnmatch.fnmatchcase(test_id, pattern):
            return reason
    return None


def _last_line(traceback_text: str, limit: int = 240) -> str:
    """The exception line of a traceback, shortened."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    starts = [
        i
        for i, line in enumerate(lines)
        if re.match(r"^[\w.]+(Error|Exception|Hung|Exit|Interrupt)?\b.*:", line)
        and not line.startswith(" ")
    ]
    text = " ".join(lines[starts[-1] :]) if starts else (lines[-1] if lines else "")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TestHung(BaseException):
    """Raised in the main thread by the watchdog (a BaseException, so that the
    test's own ``except Exception`` / ``assertRaises`` do not swallow it)."""


class FixtureHung(Exception):
    """Raised by the watchdog between tests (a module or class fixture hangs):
    an Exception, which unittest records as that fixture's error."""


class Watchdog:
    """Interrupts a test that runs longer than ``timeout`` seconds.

    A test that fails early can leave work blocked forever (a task waiting on
    a semaphore the test would have released) and then hang in tearDown's
    ``shutdown(wait=True)``. The watchdog raises TestHung in the main thread
    (through SIGUSR1, so the tests' own SIGALRM use is untouched), and again
    every ``again`` seconds until the test is over, so tearDown and cleanups
    are interrupted too; the run goes on with the next test.
    """

    def __init__(self, timeout: float, again: float = 10.0, between: float = 120.0) -> None:
        import signal
        import threading

        self.timeout = timeout
        self.again = again
        self.between = between
        self.fired: list[str] = []
        self._main = threading.main_thread().ident
        self._current: str | None = None
        self._cond = threading.Condition()
        self._deadline: float | None = None
        signal.signal(signal.SIGUSR1, self._raise)
        threading.Thread(target=self._watch, name="cpython-futures-watchdog", daemon=True).start()

    def _raise(self, signum, frame):  # type: ignore[no-untyped-def]
        if self._current is None:
            raise FixtureHung(
                f"no test started for {self.between:g} s: a fixture or cleanup hangs "
                "(runner's watchdog)"
            )
        raise TestHung(f"test still running after {self.timeout:g} s (runner's watchdog)")

    def start(self, test_id: str) -> None:
        with self._cond:
            self._current = test_id
            self._deadline = time.monotonic() + self.timeout
            self._cond.notify()

    def stop(self) -> None:
        """Between tests: module and class fixtures get ``between`` seconds."""
        with self._cond:
            self._current = None
            self._deadline = time.monotonic() + self.between
            self._cond.notify()

    def off(self) -> None:
        with self._cond:
            self._current = None
            self._deadline = None
            self._cond.notify()

    def _watch(self) -> None:
        import signal

        while True:
            with self._cond:
                while self._deadline is None or time.monotonic() < self._deadline:
                    wait = None if self._deadline is None else self._deadline - time.monotonic()
                    self._cond.wait(wait)
                label = self._current or "(between tests: a fixture or cleanup)"
                if label not in self.fired:
                    self.fired.append(label)
                self._deadline = time.monotonic() + self.again
            signal.pthread_kill(self._main, signal.SIGUSR1)


class Result(unittest.TextTestResult):
    watchdog: Watchdog | None = None

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.passed: list[str] = []
        self.ran: set[str] = set()
        self.altered: list[str] = []
        self.durations_: dict[str, float] = {}
        self._started = 0.0

    def startTest(self, test):  # type: ignore[no-untyped-def]
        self.ran.add(short_id(test))
        self._started = time.monotonic()
        super().startTest(test)
        if self.watchdog is not None:
            self.watchdog.start(short_id(test))

    def stopTest(self, test):  # type: ignore[no-untyped-def]
        # A test that fails half-way can drop a pool without shutting it down
        # (the suite's _check_crash does); collecting it now lets concur's
        # finalizer stop its workers, else the module's cleanup waits forever
        # for the fork server, whose children they are.
        gc.collect()
        if self.watchdog is not None:
            self.watchdog.stop()
        super().stopTest(test)
        self.durations_[short_id(test)] = time.monotonic() - self._started
        from test import support

        if support.environment_altered:
            self.altered.append(short_id(test))
            support.environment_altered = False

    def addSuccess(self, test):  # type: ignore[no-untyped-def]
        super().addSuccess(test)
        self.passed.append(short_id(test))


def main(argv: list[str] | None = None) -> int:
    args = _arguments().parse_args(argv)

    try:
        import concur
    except ImportError:
        sys.path.insert(
            0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
        )
        import concur

    suite_path = _find_suite(args.suite)
    child_path = [os.path.dirname(os.path.dirname(os.path.abspath(concur.__file__)))]
    overlay = None
    if suite_path is not None:
        if "test" in sys.modules:
            sys.exit("the test package was imported before the suite overlay was in place")
        overlay = _make_overlay(suite_path)
        sys.path.insert(0, overlay)
        child_path.insert(0, overlay)
    if os.environ.get("PYTHONPATH"):
        child_path.append(os.environ["PYTHONPATH"])
    # Worker processes get sys.path from multiprocessing; children of
    # assert_python_ok get this.
    env = {"PYTHONPATH": os.pathsep.join(child_path)}

    from test import support

    support.verbose = 1 if args.verbose else 0
    modules = _suite_modules()
    changed = _substitute(modules, env)
    suite = _load(modules, args.module, args.patterns or ["*"])

    _header(modules[0], suite_path, concur.__file__, changed)

    code = _run(suite, args.timeout, args.verbose)
    if overlay is not None:
        import shutil

        shutil.rmtree(overlay, ignore_errors=True)
    # A test that failed half-way (or was interrupted) may leave a pool with
    # tasks blocked forever on a lock the test would have released; the exit
    # would wait for them, as it does for ThreadPoolExecutor: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        help="run only tests whose Class.test_method matches (fnmatch)",
    )
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        help="run only this module of the suite's package, e.g. test_deadlock (3.12 and later)",
    )
    parser.add_argument("--suite", help="a test_concurrent_futures(.py) to use")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds a test may run before it is interrupted (0: never)",
    )
    return parser


def _header(
    top: types.ModuleType, suite_path: str | None, concur_file: str | None, changed: list[str]
) -> None:
    print(f"Python {sys.version.split()[0]} ({sys.executable})")
    print(f"suite: {top.__file__}" + (f" (from {suite_path})" if suite_path else ""))
    print(f"concur: {concur_file}")
    for pattern, reason in NOT_RUN.items():
        print(f"  not run: {pattern} ({reason})")
    for line in changed:
        print(f"  patched {line}")
    sys.stdout.flush()


def _run(suite: unittest.TestSuite, timeout: float, verbose: bool) -> int:
    started = time.monotonic()
    Result.watchdog = Watchdog(timeout) if timeout > 0 else None
    runner = unittest.TextTestRunner(
        verbosity=2 if verbose else 1, resultclass=Result, stream=sys.stdout
    )
    result = runner.run(suite)
    if Result.watchdog is not None:
        Result.watchdog.off()
    return _report(result, time.monotonic() - started)


def test_modules(modules: list[types.ModuleType]) -> list[types.ModuleType]:
    """The modules holding tests: the one module, or a package's test_* modules."""
    if len(modules) == 1:  # 3.11 and older
        return modules
    return [m for m in modules[1:] if m.__name__.rpartition(".")[2].startswith("test_")]


def _load(
    modules: list[types.ModuleType], only: list[str], patterns: list[str]
) -> unittest.TestSuite:
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    tested = test_modules(modules)
    if only:
        names = {m.__name__.rpartition(".")[2]: m for m in tested}
        unknown = sorted(set(only) - set(names))
        if unknown:
            sys.exit(f"--module {', '.join(unknown)}: the suite's modules are {sorted(names)}")
        tested = [names[name] for name in only]
    for module in tested:
        suite.addTests(loader.loadTestsFromModule(module))
    return _filter(suite, patterns, list(NOT_RUN))


def _filter(
    suite: unittest.TestSuite, patterns: list[str], excluded: list[str]
) -> unittest.TestSuite:
    kept = unittest.TestSuite()
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            kept.addTests(_filter(item, patterns, excluded))
            continue
        tid = short_id(item)
        if any(fnmatch.fnmatchcase(tid, p) for p in patterns) and not any(
            fnmatch.fnmatchcase(tid, p) for p in excluded
        ):
            kept.addTest(item)
    return kept


def _report(result: Result, wall: float) -> int:
    problems = [("FAIL", t, tb) for t, tb in result.failures]
    problems += [("ERROR", t, tb) for t, tb in result.errors]
    problems += [("UNEXPECTED SUCCESS", t, "") for t in result.unexpectedSuccesses]
    unexpected = []
    matched: set[str] = set()
    print("\n" + "=" * 70)
    print(
        f"run {result.testsRun}: {len(result.passed)} passed, {len(result.failures)} failed, "
        f"{len(result.errors)} errored, {len(result.skipped)} skipped, "
        f"{len(result.expectedFailures)} expected failures (decorator), "
        f"{len(result.unexpectedSuccesses)} unexpected successes; wall {wall:.1f} s"
    )
    for kind, test, tb in sorted(problems, key=lambda p: short_id(p[1])):
        tid = short_id(test)
        reason = expected_reason(tid)
        if reason is None:
            unexpected.append(tid)
            print(f"  {kind:5} {tid}  [NOT EXPECTED] {_last_line(tb)}")
        else:
            matched.update(p for p in EXPECTED if fnmatch.fnmatchcase(tid, p))
            print(f"  {kind:5} {tid}  [expected: {reason}]")
    for pattern in EXPECTED:
        ran = any(fnmatch.fnmatchcase(tid, pattern) for tid in result.ran)
        if ran and pattern not in matched:
            print(f"  note: EXPECTED {pattern!r} did not fail in this run")
    watchdog = Result.watchdog
    if watchdog is not None and watchdog.fired:
        print(
            f"  interrupted by the watchdog after {watchdog.timeout:g} s: "
            + ", ".join(watchdog.fired)
        )
    if result.altered:
        print(
            f"  {len(result.altered)} tests left threads or child processes behind "
            "(the suite's 'Warning --' lines): " + ", ".join(sorted(set(result.altered)))
        )
    failing = {short_id(t) for _, t, _ in problems}
    failed = len(set(unexpected))
    expected = len(failing) - failed
    print(
        f"{len(failing)} distinct tests failed or errored: {expected} expected, "
        f"{failed} not expected"
    )
    print(
        f"{len(result.passed)} passed, {failed} failed"
        + (f", {expected} expected failures" if expected else "")
        + (f", {len(result.skipped)} skipped" if result.skipped else "")
    )
    if result.testsRun == 0:
        print("no test ran (check -k)")
        return 5
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
