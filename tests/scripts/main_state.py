"""State that an initializer or a task leaves in globals of ``__main__``.

usage: main_state.py START_METHOD
Prints one JSON object: for each check, its value or the error it raised.
``concurrent.futures.ProcessPoolExecutor`` gives "loaded" for submit and map
(its workers run ``init`` and ``predict`` against the same module globals).
"""

import json
import sys

import concur

MODEL = None
COUNT = 0


def init():
    global MODEL
    MODEL = "loaded"


def predict(x):
    return MODEL


def bump():
    global COUNT
    COUNT += 1
    return COUNT


def check(out, key, run):
    try:
        out[key] = run()
    except BaseException as exc:  # report, do not hide the other checks
        out[key] = f"error: {type(exc).__name__}: {exc}"


def main(method: str) -> None:
    out: dict[str, object] = {}
    with concur.ProcessPool(2, initializer=init, mp_context=method) as pool:
        check(out, "submit", lambda: pool.submit(predict, 1).result(timeout=30))
        check(out, "map", lambda: list(pool.map(predict, range(4))))
        check(out, "lambda", lambda: pool.submit(lambda: MODEL).result(timeout=30))
    with concur.ProcessPool(1, mp_context=method) as pool:
        check(out, "counter", lambda: [pool.submit(bump).result(timeout=30) for _ in range(3)])
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
