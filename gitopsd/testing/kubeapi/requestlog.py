"""The record of served requests, in kubectl's vocabulary, for tests to count and assert on.

Each request becomes a :class:`RequestRecord` (verb ``get``/``list``/``watch``/``create``/
``update``/``patch``/``apply``/``delete``/``deletecollection``; resource ``plural`` or
``plural/subresource``; empty resource for discovery and other non-resource paths).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from gitopsd.testing.kubeapi.faults import WRITE_VERBS


@dataclass(frozen=True, slots=True)
class RequestRecord:
    verb: str
    resource: str
    namespace: str
    name: str
    code: int
    group: str = ""
    version: str = ""
    method: str = ""
    path: str = ""
    query: str = ""
    content_type: str = ""
    field_manager: str = ""
    user_agent: str = ""
    dry_run: bool = False
    fault: str = ""

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS and not self.dry_run

    @property
    def ok(self) -> bool:
        return self.code < 400

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def records(
        self,
        *,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
    ) -> list[RequestRecord]:
        with self._lock:
            records = list(self._records)
        return [
            r
            for r in records
            if (verb is None or r.verb == verb)
            and (resource is None or r.resource == resource)
            and (namespace is None or r.namespace == namespace)
            and (name is None or r.name == name)
        ]

    def counts(self) -> dict[str, int]:
        """``{"list packinstances": 2, "patch packinstances/status": 1, ...}`` (resource requests)."""
        return dict(Counter(f"{r.verb} {r.resource}" for r in self.records() if r.resource))

    def write_count(self, *, successful_only: bool = False) -> int:
        return sum(1 for r in self.records() if r.is_write and (r.ok or not successful_only))

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    def to_json(self) -> dict[str, Any]:
        records = self.records()
        return {
            "counts": self.counts(),
            "writes": self.write_count(),
            "requests": [r.to_json() for r in records],
        }
