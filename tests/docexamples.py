"""The runnable examples of a docs page: each ```python block followed by
the ```text block it prints, run as a script in a subprocess."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).parent.parent / "docs"


def examples(page: str) -> list[tuple[str, str]]:
    """(code, what it prints) for each python block with a text block under it."""
    blocks = re.findall(r"```(python|text)\n(.*?)```", (DOCS / page).read_text(), re.S)
    return [
        (code, shown)
        for (kind, code), (next_kind, shown) in itertools.pairwise(blocks)
        if kind == "python" and next_kind == "text"
    ]


def printed(code: str, where: Path, timeout: float) -> str:
    """What ``code`` prints, run as a script in ``where``; it must succeed."""
    script = where / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, cwd=where
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
