"""``python -m qfnet ...``: the ``qfnet`` command (for environments without its console script)."""

from qfnet.cli import main

if __name__ == "__main__":
    main()
