"""``python -m gitopsd``: the same as the ``gitopsd`` command."""

from gitopsd import cli

raise SystemExit(cli.main())
