"""``python -m animzoo``: the same entry point as the ``animzoo`` command."""

from animzoo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
