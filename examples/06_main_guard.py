"""Lesson 6: the main guard, and what happens without it.

With the spawn and forkserver start methods, multiprocessing's child process
imports your main module again. Code at the top level that starts processes
then runs again in every child. The standard library's child fails with a
long RuntimeError about "bootstrapping" while the parent carries on and
exits 0 as if all went well.

concur's workers never re-run the main module (functions from it travel by
value), so a concur program needs no main guard. Where multiprocessing
itself still re-runs it (a plain multiprocessing child of the same script),
concur code reached during that re-run stops the child at once and says
what to change (MainGuardMissing).

This script writes small programs without a main guard and runs them.

Run: python examples/06_main_guard.py
"""

import subprocess
import sys
import tempfile
from pathlib import Path

STDLIB = """
import multiprocessing
p = multiprocessing.get_context("spawn").Process(target=print, args=("hi",))
p.start()
p.join()
"""

CONCUR = """
import concur
print(concur.spawn(abs, -5, kind="process", mp_context="spawn").result(timeout=30))
"""

MIXED = """
import multiprocessing
import concur
pool = concur.ProcessPool(1, mp_context="spawn")
child = multiprocessing.get_context("spawn").Process(target=print, args=("hi",))
child.start()
child.join()
print("the plain child's exit code:", child.exitcode)
pool.shutdown()
"""

GUARDED = """
import concur

if __name__ == "__main__":
    print(concur.spawn(abs, -5, kind="process", mp_context="spawn").result(timeout=30))
"""


def run(label: str, code: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "program.py"
        script.write_text(code)
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60
        )
    lines = (done.stdout + done.stderr).strip().splitlines()
    print(f"--- {label}: exit code {done.returncode}")
    for line in lines[-20:]:
        print(f"    {line}")


if __name__ == "__main__":
    run("stdlib, no main guard", STDLIB)
    run("concur, no main guard", CONCUR)
    run("concur and a plain multiprocessing child, no main guard", MIXED)
    run("concur, with the main guard", GUARDED)
