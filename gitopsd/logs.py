"""structlog set-up: JSON lines when stderr is not a TTY, readable console lines on a TTY.

Events are short lowercase phrases (``"artifact pushed"``), facts are key=value. A processor drops
anything that looks like a credential, as a last line of defence: keys and tokens are never passed
to a logger in the first place.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

_SECRET_KEYS = re.compile(r"(password|passwd|token|secret|authorization|private|credential|key_material)", re.I)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]+(:[^/@\s]*)?@", re.I)


def _redact(_: structlog.typing.WrappedLogger, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key):
            event[key] = "[redacted]"
        elif isinstance(value, str) and "@" in value:
            event[key] = _URL_CREDENTIALS.sub(r"\g<scheme>[redacted]@", value)
    return event


def configure(level: str = "warning", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.WARNING)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
