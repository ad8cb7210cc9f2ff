"""``python -m gitopsd``: the same as the ``gitopsd`` command."""

from gitopsd.cli import main as cli

raise SystemExit(cli.main())
