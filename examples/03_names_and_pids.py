"""Lesson 3: names, pids and parent pids, exit codes, the daemon flag.

Every process has a pid and a parent pid (ppid): the children below report
the main program's pid as their ppid. A thread shares its process's pid.

Run: python examples/03_names_and_pids.py
"""

import os
import threading

import psutil

import concur


def whoami() -> dict:
    return {"pid": os.getpid(), "ppid": os.getppid(), "thread": threading.current_thread().name}


if __name__ == "__main__":
    me = os.getpid()
    print(f"main program: pid {me}, parent (your shell) {os.getppid()}")
    processes = [concur.spawn(whoami, kind="process", name=f"child-{i}") for i in range(2)]
    threads = [concur.spawn(whoami, kind="thread", name=f"thread-{i}") for i in range(2)]
    for kind, handles in (("process", processes), ("thread", threads)):
        for handle in handles:
            facts = handle.result(timeout=30)
            print(
                f"{kind:7} name={handle.name:8} pid={facts['pid']} ppid={facts['ppid']} "
                f"daemon={handle.daemon} exitcode={handle.exitcode}"
            )
    same = all(t.result()["pid"] == me for t in threads)
    print(f"threads share the main pid: {same}")
    # concur starts processes from a fork server on Linux (fast and safe, see
    # docs/start-methods.md): the children's parent is the fork server, a
    # child of this program. mp_context="spawn" makes this program the parent.
    parent = processes[0].result()["ppid"]
    print(
        f"the children's parent {parent} is a child of this program: "
        f"{psutil.Process(parent).ppid() == me}"
    )
    direct = concur.spawn(whoami, kind="process", mp_context="spawn").result(timeout=30)
    print(f"with mp_context='spawn' the parent is this program: {direct['ppid'] == me}")
    failing = concur.spawn(os._exit, 3, kind="process", name="exits-3")
    failing.join(timeout=30)
    print(f"a process that calls os._exit(3) has exit code {failing.exitcode}")
