"""The error vocabulary of gitopsd.

Every failure the reconcile pass can meet is one of two families, because the daemon treats them
differently: a *transient* error (registry down, API 5xx, a push race) is retried with backoff; a
*stalled* error (invalid spec, immutability violation, collision) waits for a human to change Git.
Adapters catch library errors and re-raise them as one of these with ``raise ... from err``.
"""

from __future__ import annotations


class GitopsdError(Exception):
    """Base error. ``reason`` is a PascalCase word that also names the condition it causes."""

    reason = "Failed"
    transient = False

    def __init__(self, message: str, *, reason: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        if self.path and not self.message.startswith(self.path):
            return f"{self.path}: {self.message}"
        return self.message


class StalledError(GitopsdError):
    """Needs a change in Git (or in the configuration) before it can succeed."""

    reason = "Stalled"


class TransientError(GitopsdError):
    """May succeed on retry: the daemon backs off and tries again."""

    reason = "TransientError"
    transient = True


class SpecError(StalledError):
    """A config-repo file is invalid: the message names the file, the field path and the fix."""

    reason = "InvalidSpec"


class RenderError(StalledError):
    """Rendering the pack's sources failed (kustomize/helm error, bad YAML in a manifest)."""

    reason = "RenderFailed"


class ImmutabilityViolation(StalledError):
    """A ClusterPack name already exists with different content."""

    reason = "ImmutabilityViolation"


class ConfigError(GitopsdError):
    """gitopsd itself is configured wrongly (flags, missing tool, missing key): stop at start."""

    reason = "ConfigError"


# -- typed transient errors of the cluster adapters: callers decide by class, never by message ----


class ClusterUnavailable(TransientError):
    """The API server could not be reached or failed (5xx, 429, a timeout): the pass stops at once."""

    reason = "ClusterUnavailable"


class NotLeader(TransientError):
    """This replica lost leadership: the write was skipped and the pass stops."""

    reason = "NotLeader"


class Conflict(TransientError):
    """A write was based on a read that is stale now (409, or the object went away): the next pass
    plans from the new state."""

    reason = "Conflict"
