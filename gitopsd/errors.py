"""The error vocabulary of gitopsd: the error classes and every reason they report.

Every failure gitopsd reports belongs to one of three *families*, because each is handled
differently:

- *transient* (registry down, API 5xx, a push race): the daemon retries with backoff, and the CLI
  says that retrying later may succeed;
- *stalled* (invalid spec, immutability violation, collision, a damaged artifact): waits for a human
  to change what the pass reads (Git, the store, the cluster);
- *usage* (a flag, a missing tool, key or credentials file): gitopsd was started wrongly and stops.

The reasons are listed here, one enum per family, and nowhere else: an error or a blocked change
carries one of them, and ``tests/test_errors.py`` checks that every reason written in the code is
listed in the family of the error that carries it. A few reasons are listed in two families where
the same fact is a usage error at start and a stalled pass later (``BranchNotFound``).

Adapters catch library errors and re-raise them as one of these with ``raise ... from err``. An
adapter never names a command-line flag: a :class:`UsageError` names the *setting* (the keyword the
adapter was given, e.g. ``git_credentials_file``) with :func:`setting`, and the CLI spells it as
its flag (:func:`spell_settings`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from typing import ClassVar


class Family(enum.StrEnum):
    TRANSIENT = "transient"
    STALLED = "stalled"
    USAGE = "usage"

    @property
    def retry_may_help(self) -> bool:
        return self is Family.TRANSIENT


class TransientReason(enum.StrEnum):
    """May succeed on retry."""

    TRANSIENT_ERROR = "TransientError"  # the class default
    ARTIFACT_PUBLISH_FAILED = "ArtifactPublishFailed"  # a blocked change: the artifact push failed
    CLUSTER_UNAVAILABLE = "ClusterUnavailable"
    CLUSTER_UNREACHABLE = "ClusterUnreachable"
    CONFLICT = "Conflict"  # a write planned from a stale read
    NOT_LEADER = "NotLeader"
    REGISTRY_UNAVAILABLE = "RegistryUnavailable"
    RENDER_PENDING = "RenderPending"  # a render still running when the pass applied the others: a later pass takes it
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    STATE_DIR_LOCKED = "StateDirLocked"
    STATUS_PUSH_FAILED = "StatusPushFailed"
    STATUS_PUSH_REJECTED = "StatusPushRejected"
    STORE_ERROR = "StoreError"
    STORE_FAILED = "StoreFailed"


class StalledReason(enum.StrEnum):
    """Needs a human to change what the pass reads: Git, the store, the cluster or the host."""

    FAILED = "Failed"  # the base class default
    STALLED = "Stalled"  # the class default
    ALIAS_BOMB = "AliasBomb"
    API_REFUSED = "ApiRefused"
    ARTIFACT_CORRUPT = "ArtifactCorrupt"
    ARTIFACT_DAMAGED = "ArtifactDamaged"
    ARTIFACT_MISMATCH = "ArtifactMismatch"
    ARTIFACT_NOT_FOUND = "ArtifactNotFound"
    ARTIFACT_REFUSED = "ArtifactRefused"
    ARTIFACT_UNVERIFIED = "ArtifactUnverified"
    BACKEND_FAILURE = "BackendFailure"  # an OSError of the host: full disk, read-only mount
    BRANCH_NOT_FOUND = "BranchNotFound"  # the followed branch was deleted
    CHART_DEPENDENCY_MISSING = "ChartDependencyMissing"
    CHART_VERSION_MISMATCH = "ChartVersionMismatch"
    CLUSTER_UNAUTHORIZED = "ClusterUnauthorized"  # a target cluster refused delivery (401/403)
    COMMIT_VERIFICATION_FAILED = "CommitVerificationFailed"
    DUPLICATE_OBJECT = "DuplicateObject"
    DUPLICATE_PACK_VERSION = "DuplicatePackVersion"
    EMPTY_REPOSITORY = "EmptyRepository"
    FILE_TOO_LARGE = "FileTooLarge"
    FOREIGN_PACK_FOLDER = "ForeignPackFolder"
    HEALTH_CHECK_FAILED = "HealthCheckFailed"
    HEALTH_CHECK_TIMEOUT = "HealthCheckTimeout"
    HELM_IN_KUSTOMIZE = "HelmInKustomize"
    IMMUTABILITY_VIOLATION = "ImmutabilityViolation"
    INVALID_ENCODING = "InvalidEncoding"
    INVALID_FILE_NAME = "InvalidFileName"
    INVALID_OBJECT = "InvalidObject"
    INVALID_REPOSITORY_NAME = "InvalidRepositoryName"
    INVALID_SPEC = "InvalidSpec"
    INVALID_STATUS_RECORD = "InvalidStatusRecord"
    INVALID_YAML = "InvalidYAML"
    NON_DETERMINISTIC = "NonDeterministic"
    NOT_A_REGULAR_FILE = "NotARegularFile"
    PACK_COLLISION_DETECTED = "PackCollisionDetected"
    PACK_TOO_LARGE = "PackTooLarge"
    PATH_ESCAPE = "PathEscape"
    PLAN_INCOMPLETE = "PlanIncomplete"
    REGISTRY_DIGEST_MISMATCH = "RegistryDigestMismatch"
    REGISTRY_REJECTED = "RegistryRejected"
    REMOTE_BASE = "RemoteBase"
    REMOTE_CHART = "RemoteChart"
    RENDER_FAILED = "RenderFailed"
    RENDER_TOO_LARGE = "RenderTooLarge"
    REPOSITORY_NOT_FOUND = "RepositoryNotFound"
    SIGNATURE_INVALID = "SignatureInvalid"
    SOURCE_NOT_FOUND = "SourceNotFound"
    STATUS_PATH_TAKEN = "StatusPathTaken"
    SUBMODULE = "Submodule"
    TOO_DEEP = "TooDeep"
    TOO_MANY_DOCUMENTS = "TooManyDocuments"
    UNINSTALL_PENDING = "UninstallPending"
    UNKNOWN_CLUSTER = "UnknownCluster"
    UNKNOWN_KIND = "UnknownKind"
    WORK_TREE_DIRTY = "WorkTreeDirty"


class UsageReason(enum.StrEnum):
    """gitopsd was started wrongly (flags, environment, a missing tool, key or credentials)."""

    CONFIG_ERROR = "ConfigError"  # the class default
    USAGE = "Usage"  # flags that contradict each other or a malformed flag value
    BRANCH_NOT_FOUND = "BranchNotFound"  # the branch given at start does not exist
    CLUSTER_UNAUTHORIZED = "ClusterUnauthorized"
    CRD_NOT_INSTALLED = "CRDNotInstalled"
    CREDENTIALS_IN_URL = "CredentialsInURL"
    CREDENTIALS_INVALID = "CredentialsInvalid"
    DETACHED_HEAD = "DetachedHead"
    HELM_EXTRA_MISSING = "HelmExtraMissing"
    INSECURE_TRANSPORT = "InsecureTransport"
    KEY_INVALID = "KeyInvalid"
    KEYRING_NOT_FOUND = "KeyringNotFound"
    KUBECONFIG_INVALID = "KubeconfigInvalid"
    KUBECONFIG_SECRET_MISSING = "KubeconfigSecretMissing"
    LEASE_HELD = "LeaseHeld"
    LEASE_NAMESPACE_NOT_FOUND = "LeaseNamespaceNotFound"
    LISTEN_FAILED = "ListenFailed"
    NAMESPACE_NOT_FOUND = "NamespaceNotFound"
    NO_COMMIT = "NoCommit"
    NO_SIGNING_KEY = "NoSigningKey"
    NO_STORE = "NoStore"
    NO_TRUSTED_KEYS = "NoTrustedKeys"
    NOT_A_GIT_REPO = "NotAGitRepo"
    NOT_A_REPOSITORY = "NotARepository"
    REGISTRY_CONFIG = "RegistryConfig"
    REGISTRY_INSECURE_REFUSED = "RegistryInsecureRefused"
    REGISTRY_TLS = "RegistryTLS"
    REGISTRY_UNAUTHORIZED = "RegistryUnauthorized"
    REPO_NOT_FOUND = "RepoNotFound"
    SECRET_UNREADABLE = "SecretUnreadable"
    SIGNING_KEY_MISSING = "SigningKeyMissing"
    STATE_DIR_IN_REPO = "StateDirInRepo"
    STATE_DIR_UNWRITABLE = "StateDirUnwritable"
    STORE_CORRUPT = "StoreCorrupt"
    TAG_NOT_FOUND = "TagNotFound"
    TOOL_MISSING = "ToolMissing"
    UNKNOWN_REVISION = "UnknownRevision"
    UNSUPPORTED_URL = "UnsupportedURL"
    WORK_TREE_UNREADABLE = "WorkTreeUnreadable"  # plan: the uncommitted work tree could not be snapshotted
    WEBHOOK_SECRET = "WebhookSecret"


REASONS: Mapping[Family, type[enum.StrEnum]] = {
    Family.TRANSIENT: TransientReason,
    Family.STALLED: StalledReason,
    Family.USAGE: UsageReason,
}


def families(reason: str) -> frozenset[Family]:
    """The families that list ``reason`` (empty for a reason passed through from elsewhere, such as
    a Kubernetes API status reason)."""
    return frozenset(family for family, listed in REASONS.items() if reason in listed._value2member_map_)


def setting(name: str) -> str:
    """A setting named inside a message: ``f"{errors.setting('git_ssh_key')} {path}: no such file"``.

    The marker is NUL-delimited (no path, flag value or environment value can hold NUL), so the
    values written around it need no escaping. ``str(err)`` spells it as words (``git ssh key``);
    the CLI renders it as its flag (``--git-ssh-key``) with :meth:`GitopsdError.render`."""
    return f"\0{name}\0"


_SETTING = re.compile("\0([a-z][a-z0-9_]*)\0")


def setting_words(name: str) -> str:
    return name.replace("_", " ")


_spell: Callable[[str], str] = setting_words


def spell_settings(name: Callable[[str], str] | None) -> None:
    """How ``str(err)`` spells the settings a message names, from now on: the CLI sets its flag names
    for the length of a command (so a pack's error in the pass report names the flag too); ``None``
    goes back to words."""
    global _spell  # noqa: PLW0603 - one process runs one command; the CLI sets it and resets it
    _spell = name or setting_words


class GitopsdError(Exception):
    """Base error. ``reason`` is a PascalCase word that also names the condition it causes."""

    reason: str = StalledReason.FAILED
    family: ClassVar[Family] = Family.STALLED

    def __init__(self, message: str, *, reason: str | None = None, path: str | None = None) -> None:
        self.template = message  # may name settings (see :func:`setting`)
        self.path = path
        self.message = _SETTING.sub(lambda m: setting_words(m[1]), message)
        super().__init__(self.message)
        # a plain str: it travels into YAML status records, JSON objects and metric labels
        self.reason = str(reason if reason is not None else type(self).reason)

    @property
    def transient(self) -> bool:
        return self.family.retry_may_help

    def settings(self) -> tuple[str, ...]:
        """The settings the message names, in order."""
        return tuple(_SETTING.findall(self.template))

    def render(self, name: Callable[[str], str]) -> str:
        """The message (with its path) with each named setting spelled by ``name``."""
        text = _SETTING.sub(lambda m: name(m[1]), self.template)
        if self.path and not text.startswith(self.path):
            return f"{self.path}: {text}"
        return text

    def __str__(self) -> str:
        return self.render(_spell)


class StalledError(GitopsdError):
    """Needs a change in Git (or in the configuration) before it can succeed."""

    reason = StalledReason.STALLED


class TransientError(GitopsdError):
    """May succeed on retry: the daemon backs off and tries again."""

    reason = TransientReason.TRANSIENT_ERROR
    family = Family.TRANSIENT


class SpecError(StalledError):
    """A config-repo file is invalid: the message names the file, the field path and the fix."""

    reason = StalledReason.INVALID_SPEC


class RenderError(StalledError):
    """Rendering the pack's sources failed (kustomize/helm error, bad YAML in a manifest)."""

    reason = StalledReason.RENDER_FAILED


class ImmutabilityViolation(StalledError):
    """A ClusterPack name already exists with different content."""

    reason = StalledReason.IMMUTABILITY_VIOLATION


class ConfigError(GitopsdError):
    """gitopsd itself is configured wrongly (flags, missing tool, missing key): stop at start."""

    reason = UsageReason.CONFIG_ERROR
    family = Family.USAGE


class UsageError(ConfigError):
    """A setting gitopsd was given is wrong or contradicts another: ``setting`` is the one it is about
    (the keyword the adapter was given, e.g. ``git_credentials_file``); the message names it and any
    other with :func:`setting`, never as a flag."""

    reason = UsageReason.USAGE

    def __init__(self, message: str, *, setting: str, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.setting = setting


# -- typed transient errors of the cluster adapters: callers decide by class, never by message ----


class ClusterUnavailable(TransientError):
    """The API server could not be reached or failed (5xx, 429, a timeout): the pass stops at once."""

    reason = TransientReason.CLUSTER_UNAVAILABLE


class NotLeader(TransientError):
    """This replica lost leadership: the write was skipped and the pass stops."""

    reason = TransientReason.NOT_LEADER


class Conflict(TransientError):
    """A write was based on a read that is stale now (409, or the object went away): the next pass
    plans from the new state."""

    reason = TransientReason.CONFLICT
