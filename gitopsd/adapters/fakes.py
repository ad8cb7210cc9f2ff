"""In-memory twins of every adapter, for tests of the pass that need no monkeypatching.

Each fake keeps what it was asked to do (``pushes``, ``applied``, ``written``) so tests can assert
on whole values. They implement the same Protocols as the real adapters (``gitopsd.ports``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import pathlib
import shutil
import tempfile
from collections.abc import Collection, Sequence

from gitopsd import errors, ports
from gitopsd.core import codec
from gitopsd.model import change, delivery, instance, pack


class FixedClock:
    def __init__(self, now: str = "2026-01-01T00:00:00Z") -> None:
        self.value = now

    def now(self) -> str:
        return self.value


class StaticSource:
    def __init__(self, tree: ports.Tree) -> None:
        self.tree = tree

    def fetch(self) -> ports.Tree:
        return self.tree


class MemoryTree:
    """A config repo held in a dict ``{path: bytes}``; ``materialize`` writes it under ``scratch``."""

    def __init__(self, files: dict[str, bytes], *, revision: str = "main@sha1:" + "0" * 40,
                 scratch: pathlib.Path | None = None) -> None:
        self.files = dict(files)
        self.scratch = scratch
        self.snapshot = ports.Snapshot(revision=revision, commit_time="2026-01-01T00:00:00Z", author="test <test@example.com>",
                                       description="memory")

    def kind(self, path: str) -> ports.EntryKind | None:
        if path in self.files:
            return ports.EntryKind.FILE
        prefix = f"{path}/" if path else ""
        if any(p.startswith(prefix) for p in self.files):
            return ports.EntryKind.DIR
        return None

    def listdir(self, path: str) -> list[tuple[str, ports.EntryKind]]:
        prefix = f"{path}/" if path else ""
        names: dict[str, ports.EntryKind] = {}
        for p in self.files:
            if p.startswith(prefix):
                head, sep, _ = p[len(prefix):].partition("/")
                names[head] = ports.EntryKind.DIR if sep else ports.EntryKind.FILE
        return sorted(names.items())

    def read(self, path: str) -> bytes:
        return self.files[path]

    def readlink(self, path: str) -> str:
        raise FileNotFoundError(path)

    def tree_id(self, path: str) -> str:
        prefix = f"{path}/" if path else ""
        digest = hashlib.sha256()
        for p in sorted(self.files):
            if p == path or p.startswith(prefix):
                digest.update(p.encode() + b"\0" + self.files[p])
        return "sha256:" + digest.hexdigest()

    def materialize(self, path: str) -> pathlib.Path:
        assert self.scratch is not None, "MemoryTree needs scratch= to materialize"
        prefix = f"{path}/" if path else ""
        root = self.scratch / self.tree_id(path).split(":")[1]
        if root.exists():  # named by content: written once, never rewritten while a renderer reads it
            return root
        self.scratch.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(dir=self.scratch, prefix=".tmp-"))
        for p, data in self.files.items():
            if p.startswith(prefix):
                dest = staging / p[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
        try:
            staging.rename(root)
        except OSError:  # made meanwhile: the same content
            shutil.rmtree(staging, ignore_errors=True)
        return root


class MemoryRegistry:
    def __init__(self) -> None:
        self.manifests: dict[str, pack.Artifact] = {}
        self.pushes: list[str] = []
        self.fail: set[str] = set()  # repositories whose push raises a transient error

    def has(self, repository: str, digest: str) -> bool:
        return digest in self.manifests

    def push(self, repository: str, artifact: pack.Artifact) -> bool:
        if repository in self.fail:
            raise errors.TransientError(f"registry refused {repository}", reason="RegistryUnavailable")
        if artifact.manifest_digest in self.manifests:
            return False
        self.manifests[artifact.manifest_digest] = artifact
        self.pushes.append(f"{repository}:{artifact.tag}")
        return True


class MemoryCache:
    def __init__(self) -> None:
        self.entries: dict[str, pack.CompiledPack] = {}

    def get(self, key: str) -> pack.CompiledPack | None:
        return self.entries.get(key)

    def put(self, key: str, compiled: pack.CompiledPack) -> None:
        self.entries[key] = compiled.without_artifact()


class MemoryCluster:
    """Objects kept as Kubernetes-shaped dicts with a global resourceVersion, like the real backends:
    a new object gets a new uid, a PackInstance write from a stale read is a ``Conflict``, and the
    whole apply is all or nothing."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, object]] = {}
        self.rv = 0
        self.uids = 0
        self.delivered: dict[tuple[str, str], delivery.Delivery] = {}
        self.applied: list[change.Change] = []
        self.fail_next_apply: Exception | None = None
        self._issued = 0
        self._tokens: dict[int, tuple[str, dict[tuple[str, str], tuple[str, str]]]] = {}

    def observe(self, namespace: str, *, since: object = None) -> instance.Observed:
        """The change feed compares the objects with those a token was handed out with, so that a
        test editing ``objects`` by hand is seen like any other writer."""
        packs, instances = {}, {}
        seen: dict[tuple[str, str], tuple[str, str]] = {}
        for (kind, ns, name), obj in self.objects.items():
            if ns != namespace:
                continue
            if kind == pack.CLUSTER_PACK_KIND:
                p = codec.observed_pack_from_object(obj)
                packs[p.name] = p
                seen[(kind, name)] = (p.base_pack_name, repr(p))
            else:
                i = codec.pack_instance_from_object(obj)
                instances[i.name] = i
                seen[(kind, name)] = (i.base_pack_name, repr(i))
        before = self._tokens.get(since) if isinstance(since, int) else None
        changed = None
        if before is not None and before[0] == namespace:
            old = before[1]
            changed = frozenset(entry[0] for key in old.keys() | seen.keys() if old.get(key) != seen.get(key)
                                for entry in (old.get(key), seen.get(key)) if entry is not None)
        self._issued += 1
        self._tokens = {**dict(list(self._tokens.items())[-3:]), self._issued: (namespace, seen)}
        return instance.Observed(packs=packs, instances=instances, changed=changed, token=self._issued)

    def apply(self, namespace: str, changes: Sequence[change.Change], revision: str, now: str) -> int:
        if self.fail_next_apply is not None:
            err, self.fail_next_apply = self.fail_next_apply, None
            raise err
        staged = copy.deepcopy(self.objects)
        rv, written = self.rv, 0
        for c in changes:
            if not c.writes:
                continue
            if c.kind is change.ObjectKind.CLUSTER_PACK:
                key = (pack.CLUSTER_PACK_KIND, namespace, c.name)
                if c.action is change.Action.UNINSTALL:
                    staged.pop(key, None)
                else:
                    assert c.cluster_pack is not None
                    obj = c.cluster_pack.to_object()
                    rv += 1
                    self.uids += 1
                    # the ignore below: object JSON: metadata is a dict
                    obj["metadata"] = {**obj["metadata"], "resourceVersion": str(rv), "uid": f"uid-{self.uids}"}  # type: ignore[dict-item]
                    staged[key] = obj
            else:
                assert c.pack_instance is not None
                key = (instance.PACK_INSTANCE_KIND, namespace, c.name)
                old = staged.get(key)
                planned_from = c.pack_instance.resource_version
                # the ignore below: object JSON: metadata is a dict
                if old is not None and planned_from is not None and old["metadata"]["resourceVersion"] != planned_from:  # type: ignore[index]
                    raise errors.TransientError(
                        f"PackInstance {c.name} changed during the pass (resourceVersion); the next pass retries",
                        reason="Conflict",
                    )
                if c.action is change.Action.UNINSTALL:
                    written += staged.pop(key, None) is not None
                    continue
                if old is not None:
                    uid = old["metadata"]["uid"]  # type: ignore[index]  # object JSON: metadata is a dict
                else:
                    self.uids += 1
                    uid = f"uid-{self.uids}"
                obj = codec.pack_instance_object(dataclasses.replace(c.pack_instance, uid=None, resource_version=None))
                rv += 1
                # the ignore below: object JSON: metadata is a dict
                obj["metadata"] = {**obj["metadata"], "resourceVersion": str(rv), "uid": uid}  # type: ignore[dict-item]
                staged[key] = obj
            written += 1
        self.objects, self.rv = staged, rv
        self.applied.extend(c for c in changes if c.writes)
        self.delivered = {k: v for k, v in self.delivered.items() if (instance.PACK_INSTANCE_KIND, *k) in staged}
        return written

    def deliveries(self, namespace: str, names: Collection[str] | None = None) -> dict[str, delivery.Delivery]:
        return {name: d for (ns, name), d in self.delivered.items() if ns == namespace and (names is None or name in names)}

    def record_delivery(self, namespace: str, name: str, record: delivery.Delivery, now: str) -> None:
        if (instance.PACK_INSTANCE_KIND, namespace, name) in self.objects:
            self.delivered[(namespace, name)] = record
