"""``python -m concur`` runs the command line."""

from concur.cli import main

if __name__ == "__main__":
    main()
