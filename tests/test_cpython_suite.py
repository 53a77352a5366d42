"""CPython's own concurrent.futures tests, run against concur's pools.

``tools/cpython_futures.py`` runs the interpreter's ``test.test_concurrent_futures``
with concur's ``ThreadPool`` and ``ProcessPool`` in place of the standard
library's executors. Every failure must be one its ``EXPECTED`` table explains
(a test that reads a stdlib executor's private attribute, or a documented
difference); any other failure fails this test, with the runner's report.
One test per module of the suite (3.12 and later split it into a package).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

RUNNER = Path(__file__).parent.parent / "tools" / "cpython_futures.py"
SUITE = Path(sysconfig.get_path("stdlib")) / "test" / "test_concurrent_futures"


def _modules() -> list[str]:
    """The suite's test modules, "" for the one-module suite of 3.11 and older."""
    if SUITE.is_dir():
        return sorted(p.stem for p in SUITE.glob("test_*.py"))
    return [""] if SUITE.with_suffix(".py").exists() else []


MODULES = _modules()


@pytest.mark.skipif(
    not MODULES,
    reason="this interpreter was installed without its test suite "
    "(.ci/run also runs the tests on Python 3.13, which has it)",
)
@pytest.mark.parametrize("module", MODULES or [""])
@pytest.mark.timeout(600)
def test_the_standard_librarys_own_tests_pass_against_concur(module):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent / "src"))
    command = [sys.executable, str(RUNNER)] + (["--module", module] if module else [])
    proc = subprocess.run(command, capture_output=True, text=True, timeout=580, env=env)
    report = proc.stdout[proc.stdout.rfind("=" * 70) :]
    assert proc.returncode == 0, report or proc.stderr[-4000:]
    passed = re.search(r"^(\d+) passed, 0 failed", report, re.MULTILINE)
    assert passed is not None, report
    assert int(passed.group(1)) > 0, report
