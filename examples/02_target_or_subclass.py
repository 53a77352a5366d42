"""Lesson 2: a target function or a subclass that overrides run().

Both start the same kind of process. concur's answer is a plain function:
nothing to subclass, and the function can be a lambda or a closure.

Run: python examples/02_target_or_subclass.py
"""

import multiprocessing
import os

import concur


def work(label: str) -> None:
    print(f"  {label}: running in pid {os.getpid()}")


class Worker(multiprocessing.Process):
    def __init__(self, label: str) -> None:
        super().__init__(name=label)
        self.label = label

    def run(self) -> None:  # what start() runs in the new process
        work(self.label)


if __name__ == "__main__":
    print("a target function:")
    proc = multiprocessing.Process(target=work, args=("target",))
    proc.start()
    proc.join()
    print("a subclass overriding run():")
    sub = Worker("subclass")
    sub.start()
    sub.join()
    print("concur: any callable, even a closure over local state")
    prefix = "closure"
    handle = concur.spawn(lambda: f"{prefix} ran in pid {os.getpid()}", kind="process")
    print(f"  {handle.result(timeout=30)}")
    print(f"all three exited with code 0: {[proc.exitcode, sub.exitcode, handle.exitcode]}")
