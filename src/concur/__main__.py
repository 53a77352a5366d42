"""``python -m concur`` runs the command line.

``python -m`` puts the current directory first on ``sys.path``; concur takes
it off before importing anything more, so a file there named like one of its
dependencies (click.py, rich.py) is not run in its place. ``concur map``
still finds MODULE in the current directory: it looks there last.
"""

import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.abspath(sys.path[0] or ".") != here:  # not a checkout run from src/
        del sys.path[0]

from concur.cli import main

if __name__ == "__main__":
    main()
