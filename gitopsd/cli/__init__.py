"""The ``gitopsd`` command line: ``main`` (parser, one-shot passes, exit codes), ``run`` (the
daemon's command), ``plan`` (``gitopsd plan``), ``verify`` and ``get``, and ``flags`` (the flags they
share). The console script is ``gitopsd.cli.main:main``; ``python -m gitopsd`` calls the same. The
parsed command line becomes one ``gitopsd.wiring.settings.Settings``; the Env of each command is
built from it by ``gitopsd.wiring``."""
