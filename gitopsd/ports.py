"""The Protocols the reconcile pass sees.

``gitopsd.reconcile`` only talks to these; ``gitopsd.adapters`` implements them for each mode (a
local folder or Git for the source, a SQLite store or Kubernetes for the cluster, an OCI layout or
a registry for artifacts), and ``gitopsd.adapters.fakes`` has in-memory twins for tests.

A capability only some adapters have (a registry that can verify or repair what it serves, a
compile cache that remembers failures, a source that can tell cheaply whether anything is new) is
its own ``runtime_checkable`` Protocol below, and callers ask ``isinstance(adapter, ports.X)``:
the pass never probes for a method by its name.
"""

from __future__ import annotations

import dataclasses
import enum
import pathlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from gitopsd.core import delivery as delivery_core
from gitopsd.model import change, delivery, instance, pack, spec


class EntryKind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    LINK = "link"


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Facts about the revision a Tree was read at."""

    revision: str  # main@sha1:<hex> for Git, dir@sha256:<hex> for a plain folder
    commit_time: str  # RFC 3339 UTC
    author: str
    description: str  # how it was read, e.g. "git work tree at HEAD" or "plain folder"
    commit: str | None = None  # hex commit id for Git


class Tree(Protocol):
    """A read-only view of the config repo at one revision. Paths are repo-relative POSIX strings."""

    snapshot: Snapshot

    def kind(self, path: str) -> EntryKind | None: ...

    def listdir(self, path: str) -> list[tuple[str, EntryKind]]: ...

    def read(self, path: str) -> bytes: ...

    def readlink(self, path: str) -> str: ...

    def tree_id(self, path: str) -> str:
        """A content id of the folder (or file) at ``path``: equal ids mean equal content."""
        ...

    def materialize(self, path: str) -> pathlib.Path:
        """A directory on disk with the content of ``path``, for external renderers."""
        ...


class Source(Protocol):
    def fetch(self) -> Tree: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    """Rendered manifests: (file or template name, YAML bytes) in a deterministic order."""

    documents: tuple[tuple[str, bytes], ...]
    renderers: tuple[tuple[str, str], ...]  # (renderer, version) for provenance
    chart: pack.ChartInfo | None = None
    dropped_hooks: tuple[str, ...] = ()  # Helm test hooks left out, as "Kind/name (test)"
    reproducible: bool = True  # False: rendering the same inputs twice gave different output


class Renderer(Protocol):
    def inputs(self, tree: Tree, build: spec.PackBuild) -> list[str]:
        """Repo paths the build reads besides its own folder: part of its compile-cache key."""
        ...

    def render(self, tree: Tree, build: spec.PackBuild) -> Rendered: ...


@runtime_checkable
class Preparing(Protocol):
    """A Renderer whose slow part (a child process) can run apart from the Tree (optional).

    ``prepare`` does every read of the Tree (checks, ``materialize``) in the calling thread and
    raises what ``render`` would raise there; the call it returns runs the child and turns its
    answer into ``Rendered`` (or raises ``render``'s error) without the Tree, so the compile step
    may call it from a worker thread. ``render(tree, build)`` is ``prepare(tree, build)()``.
    """

    def prepare(self, tree: Tree, build: spec.PackBuild) -> Callable[[], Rendered]: ...


class Cluster(Protocol):
    """The management cluster, or the local store playing it."""

    def observe(self, namespace: str, *, since: object = None) -> instance.Observed:
        """What the namespace holds, and its change feed: ``Observed.changed`` names the bases with
        an object written (by anyone) since the ``since`` token (an ``Observed.token`` of this
        same adapter), or is ``None`` when it cannot tell."""
        ...

    def apply(self, namespace: str, changes: Sequence[change.Change], revision: str, now: str) -> int:
        """Execute the writes of a plan, all or nothing where the backend allows; returns writes done."""
        ...

    def deliveries(self, namespace: str, names: Collection[str] | None = None) -> dict[str, delivery.Delivery]:
        """The last delivery record of each PackInstance (``status.delivery``), by instance name; of
        the instances ``names`` only, when given."""
        ...

    def record_delivery(self, namespace: str, name: str, record: delivery.Delivery, now: str) -> None:
        """Keep ``record`` on PackInstance ``name`` (and an Event); nothing when the instance is gone."""
        ...


class Registry(Protocol):
    """Where artifacts are published: an OCI layout folder or an OCI registry."""

    def has(self, repository: str, digest: str) -> bool: ...

    def push(self, repository: str, artifact: pack.Artifact) -> bool:
        """Publish; ``False`` when the registry already had the manifest (nothing uploaded)."""
        ...


class Signer(Protocol):
    def sign(self, data: bytes) -> str: ...


class Verifier(Protocol):
    def verify(self, data: bytes, signature: str) -> bool: ...


@runtime_checkable
class NamesKeys(Protocol):
    """A Verifier that names the set of keys it trusts (optional): a verdict remembered across
    processes holds only for the same set."""

    def key_set(self) -> str:
        """A digest of the trusted public keys, in order."""
        ...


class CompileCache(Protocol):
    def get(self, key: str) -> pack.CompiledPack | None: ...

    def put(self, key: str, compiled: pack.CompiledPack) -> None: ...


class StatusWriter(Protocol):
    def write(self, records: Iterable[tuple[str, bytes]], message: str) -> str | None:
        """Write status files; return the commit made, or ``None`` when nothing changed."""
        ...


@runtime_checkable
class GroupsEvents(Protocol):
    """A Cluster that sends the Events of ``record_delivery`` when a batch of records ends, one per
    pack and result instead of one per PackInstance (optional): ``flush_events`` ends the batch."""

    def flush_events(self, now: str) -> None: ...


@runtime_checkable
class ReadsDeliveryFields(Protocol):
    """A Cluster that reads fields of the delivery records without making whole records of them
    (optional): what the deliver step needs of each instance it walks, and what a prune keeps."""

    def delivery_states(self, namespace: str, names: Collection[str] | None = None) -> dict[str, tuple[str, str]]:
        """(digest, result) of each PackInstance's last delivery record (of ``names`` only, when given)."""
        ...

    def delivery_holdings(self, namespace: str, keys: Mapping[str, Collection[tuple[str, str, str, str]]]
                          ) -> dict[str, dict[str, set[tuple[str, str, str, str]]]]:
        """cluster -> PackInstance -> which of ``keys[cluster]`` (``delivery.Entry.key``) its record
        holds there (instances holding none of them left out)."""
        ...


@runtime_checkable
class OthersWrite(Protocol):
    """A Cluster whose delivery records others may change without moving the observed parts
    (optional): ``others_wrote`` changes when another process wrote to the store (the local store's
    records are not part of its PackInstances; the Kubernetes adapter's are, in their status)."""

    def others_wrote(self) -> object: ...


@runtime_checkable
class Flushing(Protocol):
    """A compile cache or registry that batches its writes: ``flush`` ends a step's batch (optional)."""

    def flush(self) -> None: ...


@runtime_checkable
class RetainsEntries(Protocol):
    """A compile cache told which entries a compile step that looked nothing up uses (optional): a
    ``flush`` that keeps in memory only those."""

    def retain(self, keys: Collection[str]) -> None: ...


@runtime_checkable
class RemembersSpecs(Protocol):
    """A CompileCache that also keeps validated PackBuild documents by a key of their exact bytes,
    across processes (optional): a new process does not parse and schema-check unchanged PackBuilds."""

    def spec_documents(self, keys: Sequence[str]) -> dict[str, str]:
        """The JSON text of each known key's validated document; unknown keys are left out."""
        ...

    def remember_spec_document(self, key: str, text: str) -> None: ...


@runtime_checkable
class RemembersInputs(Protocol):
    """A CompileCache that also keeps each pack's renderer input folders with the tree ids they
    were read from, across processes (optional): a new process does not walk unchanged kustomizations."""

    def input_folders(self, keys: Sequence[str]) -> dict[str, str]:
        """The JSON text ``[folders, tree ids]`` of each known key; unknown keys are left out."""
        ...

    def remember_input_folders(self, key: str, text: str) -> None: ...


@runtime_checkable
class RemembersVerdicts(Protocol):
    """A CompileCache that also keeps signature checks that passed, across processes (optional).
    A key covers the signed spec, the signature and the trusted key set; the cache lives in the
    state dir beside the signing key, as trusted as the store whose specs it vouches for."""

    def verified(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` whose signature check passed before."""
        ...

    def remember_verified(self, keys: Sequence[str]) -> None: ...


@runtime_checkable
class RemembersFailures(Protocol):
    """A CompileCache that also keeps render failures by cache key, across processes (optional)."""

    def failure(self, key: str, max_age: float) -> tuple[str, str] | None:
        """(reason, message) of a render of exactly these inputs that failed within ``max_age`` seconds."""
        ...

    def remember_failure(self, key: str, reason: str, message: str) -> None: ...


@runtime_checkable
class VerifiesArtifacts(Protocol):
    """A Registry that can check a stored artifact byte for byte against its digests (optional)."""

    def verify(self, repository: str, manifest_digest: str, layers: Mapping[str, str] | None = None) -> list[str]:
        """Problems with the stored artifact; empty when it is sound."""
        ...


@runtime_checkable
class RepairsArtifacts(Protocol):
    """A Registry that can tell cheaply whether a published artifact is intact and write it again (optional)."""

    def recheck(self, *, full: bool) -> Collection[tuple[str, str]] | None:
        """Begin a pass's ``sound`` checks: an artifact found sound earlier in this process may count as
        sound without being read again while the registry saw no change to it; ``full`` forgets that
        (the daemon's resync checks everything). Returns the artifacts (repository, manifest digest)
        found sound before that no longer count as sound since the last call: every other one found
        sound still is; None when the registry cannot tell (then every artifact is checked)."""
        ...

    def sound(self, repository: str, manifest_digest: str) -> bool: ...

    def repair(self, repository: str, art: pack.Artifact) -> None: ...


@runtime_checkable
class ServesArtifacts(Protocol):
    """A Registry that hands artifacts back (delivery reads them from here) (optional)."""

    def pull(self, repository: str, digest: str) -> tuple[bytes, dict[str, bytes]]: ...


@runtime_checkable
class InPlace(Protocol):
    """A StatusWriter that can tell whether the branch still holds what it last wrote (optional)."""

    def in_place(self) -> bool: ...


@runtime_checkable
class Sharded(Protocol):
    """A StatusWriter that can replace only the records of the packs one shard owns (optional)."""

    owns: Callable[[str], bool] | None


@runtime_checkable
class HasSubmodules(Protocol):
    """A Tree read from Git: the submodule paths it met (and left out of listings) (optional)."""

    submodules: set[str]


@runtime_checkable
class ComparesTrees(Protocol):
    """A Tree that tells which entries of a folder differ from the same folder at another tree id,
    without listing it (optional; Git compares two trees by their ids)."""

    def changed_names(self, path: str, since: str) -> set[str] | None:
        """Names of the entries of folder ``path`` added, removed or changed since the folder had tree id
        ``since``; None when that tree is not known here."""
        ...


@runtime_checkable
class StatusMoves(Protocol):
    """A Pollable source that can tell when its branch moved under the same desired revision (optional)."""

    def status_moved(self) -> bool: ...


class Clock(Protocol):
    def now(self) -> str:
        """The current time as RFC 3339 UTC (``2026-11-22T10:00:00Z``)."""
        ...


@runtime_checkable
class Pollable(Protocol):
    """A Source that can tell cheaply (a ref listing, an empty fetch) whether anything is new."""

    def head(self) -> str | None:
        """The revision a ``fetch`` would read now (``main@sha1:<hex>``), or ``None`` if unknown."""
        ...


class Deliverer(Protocol):
    """Push-mode delivery into target clusters (``gitopsd.delivery.runner``)."""

    def reachable(self, cluster: spec.Cluster) -> bool:
        """Whether gitopsd has a way to reach ``cluster`` (otherwise it is records-only)."""
        ...

    def run(self, clusters: dict[str, spec.Cluster], jobs: Sequence[delivery_core.Job],
            namespace: str) -> list[tuple[delivery_core.Job, delivery.Delivery]]:
        """Carry out ``jobs``, clusters concurrently; one result per job, whatever happens to the others."""
        ...
