"""Lesson 11: daemon processes and threads are cut off when the program ends.

A daemon worker is stopped (a process) or abandoned mid-step (a thread) when
the main program finishes; a non-daemon one is waited for. The script runs
a small program of each kind and shows which steps were printed.

Run: python examples/11_daemons.py
"""

import subprocess
import sys

PROGRAM = """
import sys, time
import concur

def steps(label):
    for i in range(5):
        print(label, "step", i, flush=True)
        time.sleep(0.1)

if __name__ == "__main__":
    kind, daemon = sys.argv[1], sys.argv[2] == "daemon"
    concur.spawn(steps, f"{kind}({sys.argv[2]})", kind=kind, daemon=daemon)
    time.sleep(0.25)
    print("main program ends", flush=True)
"""

if __name__ == "__main__":
    for kind in ("process", "thread"):
        for flag in ("daemon", "non-daemon"):
            done = subprocess.run(
                [sys.executable, "-c", PROGRAM, kind, flag],
                capture_output=True,
                text=True,
                timeout=60,
            )
            lines = done.stdout.splitlines()
            steps = sum("step" in line for line in lines)
            print(f"{kind:7} {flag:10}: {steps} of 5 steps ran; {' | '.join(lines[-2:])}")
