"""``python -m advkit``: the command line (see `advkit.cli`)."""

from advkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
