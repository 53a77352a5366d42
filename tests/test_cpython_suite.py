"""CPython's own concurrent.futures tests, run against concur's pools.

``tools/cpython_futures.py`` runs the interpreter's ``test.test_concurrent_futures``
with concur's ``ThreadPool`` and ``ProcessPool`` in place of the standard
library's executors. Every failure must be one its ``EXPECTED`` table explains
(a test that reads a stdlib executor's private attribute, or a documented
difference); any other failure fails this test, with the runner's report.
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


def _has_suite() -> bool:
    tests = Path(sysconfig.get_path("stdlib")) / "test"
    return any(
        (tests / name).exists()
        for name in ("test_concurrent_futures", "test_concurrent_futures.py")
    )


@pytest.mark.skipif(
    not _has_suite(),
    reason="this interpreter was installed without its test suite "
    "(.ci/run also runs the tests on Python 3.13, which has it)",
)
@pytest.mark.timeout(1200)
def test_the_standard_librarys_own_tests_pass_against_concur():
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent / "src"))
    proc = subprocess.run(
        [sys.executable, str(RUNNER)], capture_output=True, text=True, timeout=1150, env=env
    )
    report = proc.stdout[proc.stdout.rfind("=" * 70) :]
    assert proc.returncode == 0, report or proc.stderr[-4000:]
    passed = re.search(r"^(\d+) passed, 0 failed", report, re.MULTILINE)
    assert passed is not None, report
    assert int(passed.group(1)) >= 150, report
