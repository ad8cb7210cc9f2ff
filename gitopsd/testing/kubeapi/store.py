"""Object storage with etcd's versioning: one global revision, a bounded change history.

Every write bumps the one ``resourceVersion`` counter and appends a :class:`Change` to the history,
which serves three readers: watches (replay from a resourceVersion, then follow), lists at an exact
resourceVersion and paged lists (a consistent snapshot rebuilt by undoing newer changes). When a
reader asks for a revision older than the history keeps (or than :meth:`Store.compact` left), it
gets :class:`Expired`, which the API turns into 410 Gone, like etcd compaction.

One re-entrant lock guards everything; watchers sleep on a condition variable tied to it.
``operations`` holds the lock across each read-modify-write.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gitopsd.testing.kubeapi.resources import StorageKey

JSON = dict[str, Any]
ObjectKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


class Expired(Exception):
    """The requested resourceVersion is older than the retained history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


@dataclass(frozen=True, slots=True)
class Change:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    key: StorageKey
    obj: JSON  # the state after the change (for DELETED: the last state, at the deletion's rv)
    old: JSON | None


def object_key(obj: JSON) -> ObjectKey:
    metadata = obj["metadata"]
    return (metadata.get("namespace", ""), metadata["name"])


class Store:
    def __init__(self, history: int = 1000) -> None:
        if history < 1:
            raise ValueError("history must keep at least one change")
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._objects: dict[StorageKey, dict[ObjectKey, JSON]] = {}
        self._history: deque[Change] = deque()
        self._history_limit = history
        self._rv = 0
        self._horizon = 0  # changes at or below this revision are forgotten
        self._closed = False

    # -- reads ----------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    @property
    def oldest_resource_version(self) -> int:
        """The oldest revision a watch or exact list may start from."""
        with self.lock:
            return self._horizon

    @property
    def closed(self) -> bool:
        return self._closed

    def get(self, key: StorageKey, namespace: str, name: str) -> JSON | None:
        """A copy of the stored object, or ``None``."""
        with self.lock:
            obj = self._objects.get(key, {}).get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, key: StorageKey, namespace: str | None = None, *, copies: bool = True) -> list[JSON]:
        """Copies of the stored objects in key order (namespace, name), like etcd. ``copies=False``:
        the stored objects themselves, for a caller that holds ``lock`` and copies what it keeps."""
        with self.lock:
            items = self._objects.get(key, {})
            pick = copy.deepcopy if copies else _same
            return [pick(items[k]) for k in sorted(items) if namespace is None or k[0] == namespace]

    def snapshot(self, key: StorageKey, rv: int, *, copies: bool = True) -> list[JSON]:
        """The objects of ``key`` as they were at revision ``rv``, in key order (``copies`` as in ``objects``)."""
        with self.lock:
            self._check_retained(rv)
            state = {k: v for k, v in self._objects.get(key, {}).items()}
            for change in reversed(self._history):
                if change.rv <= rv:
                    break
                if change.key != key:
                    continue
                target = object_key(change.obj)
                if change.type == "ADDED":
                    state.pop(target, None)
                else:
                    assert change.old is not None
                    state[target] = change.old
            pick = copy.deepcopy if copies else _same
            return [pick(state[k]) for k in sorted(state)]

    def changes_after(self, rv: int) -> list[Change]:
        with self.lock:
            self._check_retained(rv)
            return [change for change in self._history if change.rv > rv]

    def _check_retained(self, rv: int) -> None:
        if rv < self._horizon:
            raise Expired(rv, self._horizon + 1)

    def wait(self, after_rv: int, timeout: float) -> bool:
        """Sleep until a revision newer than ``after_rv`` exists (True), or timeout/close."""
        with self._changed:
            return (
                self._changed.wait_for(lambda: self._rv > after_rv or self._closed, timeout)
                and not self._closed
            )

    # -- writes ---------------------------------------------------------------------------

    def put(self, key: StorageKey, obj: JSON, old: JSON | None) -> JSON:
        """Store ``obj`` (created when ``old`` is None) at a new revision; returns the stored copy."""
        with self.lock:
            self._rv += 1
            stored = copy.deepcopy(obj)
            stored["metadata"]["resourceVersion"] = str(self._rv)
            self._objects.setdefault(key, {})[object_key(stored)] = stored
            self._record(Change(self._rv, "ADDED" if old is None else "MODIFIED", key, stored, old))
            return copy.deepcopy(stored)

    def delete(self, key: StorageKey, obj: JSON) -> JSON:
        """Remove the object; the DELETED change carries ``obj`` (its last state) at a new revision."""
        with self.lock:
            old = self._objects.get(key, {}).pop(object_key(obj))
            self._rv += 1
            gone = copy.deepcopy(obj)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._record(Change(self._rv, "DELETED", key, gone, old))
            return copy.deepcopy(gone)

    def _record(self, change: Change) -> None:
        self._history.append(change)
        while len(self._history) > self._history_limit:
            self._horizon = self._history.popleft().rv
        self._changed.notify_all()

    def compact(self, rv: int | None = None) -> None:
        """Forget the history up to ``rv`` (default: all of it), like an etcd compaction."""
        with self.lock:
            upto = self._rv if rv is None else rv
            while self._history and self._history[0].rv <= upto:
                self._history.popleft()
            self._horizon = max(self._horizon, upto)

    def close(self) -> None:
        """Wake every watcher so it ends its stream."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def keys(self, predicate: Callable[[StorageKey], bool]) -> list[StorageKey]:
        with self.lock:
            return [key for key in self._objects if predicate(key)]


def _same(obj: JSON) -> JSON:
    return obj
