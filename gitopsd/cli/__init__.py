"""The ``gitopsd`` command line: ``main`` (parser, one-shot commands, exit codes), ``run`` (the
daemon's command), ``plan`` (``gitopsd plan``) and ``flags`` (the flags they share). The console
script is ``gitopsd.cli.main:main``; ``python -m gitopsd`` calls the same. The Env of each command
is built by ``gitopsd.wiring``."""
