"""The semantics of each API verb over the store: what kube-apiserver's generic registry does.

create/get/list/watch/update/patch/apply/delete/deletecollection, with: system metadata (uid,
creationTimestamp, generation bumped on spec changes only), the global resourceVersion and
optimistic concurrency, the ``/status`` subresource split, finalizers, namespace existence,
namespaces that terminate and are emptied a little later, CRD deletion taking its objects along, defaulting and validation (``kinds``, ``schema``), managed fields
(``managedfields``), no-op writes that keep the resourceVersion, dry runs, list paging and exact
reads from the history, and watches that replay, filter, bookmark and expire (410).

Each method takes a parsed :class:`Request` and returns ``(HTTP code, body)`` or raises
:class:`errors.ApiError`; ``handler`` deals with HTTP. The store lock is held across each
read-modify-write.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import random
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml

from gitopsd.testing.kubeapi import errors, kinds, managedfields, patches, schema
from gitopsd.testing.kubeapi.resources import (
    CRD_KEY,
    NAMESPACE_KEY,
    Registry,
    ResourceType,
)
from gitopsd.testing.kubeapi.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
)
from gitopsd.testing.kubeapi.store import Change, Expired, Store

JSON = dict[str, Any]
Response = tuple[int, JSON]

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
PATCH_TYPES = (JSON_PATCH, MERGE, STRATEGIC, APPLY)
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_SYSTEM_METADATA = (
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)


@dataclass(frozen=True, slots=True)
class Request:
    """One resource request, parsed from HTTP."""

    verb: str
    rt: ResourceType
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str = ""
    user_agent: str = ""
    warnings: list[str] = field(default_factory=list)  # sent back as ``Warning`` headers

    def param(self, name: str, default: str = "") -> str:
        return self.params.get(name, default)

    @property
    def dry_run(self) -> bool:
        value = self.param("dryRun")
        if value not in ("", "All"):
            raise errors.bad_request(f'unsupported dry run directive "{value}", supported values: "All"')
        return value == "All"

    @property
    def manager(self) -> str:
        return self.param("fieldManager") or managedfields.manager_from_user_agent(self.user_agent)


def _flag(value: str) -> bool:
    return value.lower() in ("true", "1")


def _scope(rt: ResourceType, subresource: str) -> managedfields.Scope:
    if subresource == "status":
        return lambda path: path[:1] == ("f:status",)
    if rt.has_status:
        return lambda path: path[:1] != ("f:status",)
    return lambda path: True


def _content(rt: ResourceType, obj: JSON) -> JSON:
    """What ``generation`` tracks: everything but metadata (and status when it is a subresource)."""
    skip = {"apiVersion", "kind", "metadata"} | ({"status"} if rt.has_status else set())
    return {k: v for k, v in obj.items() if k not in skip}


class Api:
    """Kubernetes API semantics over a :class:`Store` for the types of a :class:`Registry`."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        clock: Callable[[], datetime],
        rng: random.Random,
        bookmark_interval: float = 5.0,
        namespace_deletion_delay: float = 2.0,
    ) -> None:
        self.store = store
        self.registry = registry
        self._clock = clock
        self._rng = rng
        self.bookmark_interval = bookmark_interval
        self.namespace_deletion_delay = namespace_deletion_delay
        self._terminating: dict[str, float] = {}  # namespace -> monotonic time its content goes

    # -- helpers --------------------------------------------------------------------------

    def _now(self) -> str:
        return self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")

    def _uid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _existing(self, req: Request) -> JSON:
        obj = self.store.get(req.rt.storage_key, req.namespace, req.name)
        if obj is None:
            raise errors.not_found(req.rt.group, req.rt.plural, req.name)
        return obj

    def _require_namespace(self, rt: ResourceType, namespace: str) -> None:
        if not rt.namespaced:
            return
        found = self.store.get(NAMESPACE_KEY, "", namespace)
        if found is None:
            raise errors.not_found("", "namespaces", namespace)
        if found["metadata"].get("deletionTimestamp"):
            raise errors.ApiError(
                403,
                "Forbidden",
                f'{rt.plural} "{namespace}" is forbidden: unable to create new content in namespace {namespace} because it is being terminated',
                details={
                    "name": namespace,
                    "kind": "namespaces",
                    "causes": [
                        {
                            "reason": "NamespaceTerminating",
                            "message": f"namespace {namespace} is being terminated",
                            "field": "metadata.namespace",
                        }
                    ],
                },
            )

    def finalize_namespaces(self, *, force: bool = False) -> None:
        """Do the namespace controller's work: empty and remove terminating namespaces that are due
        (all of them with ``force``). Called before each request and while watches wait."""
        if not self._terminating:
            return
        with self.store.lock:
            now = time.monotonic()
            for name, due in sorted(self._terminating.items()):
                if not force and due > now:
                    continue
                del self._terminating[name]
                namespace = self.store.get(NAMESPACE_KEY, "", name)
                if namespace is None:
                    continue
                keys = sorted({t.storage_key for t in self.registry.all() if t.namespaced})
                for key in keys:
                    for victim in self.store.objects(key, name):
                        self.store.delete(key, victim)
                namespace["spec"]["finalizers"] = []
                self.store.delete(NAMESPACE_KEY, namespace)

    def _decode(self, req: Request, data: bytes | None = None) -> Any:
        raw = req.body if data is None else data
        try:
            if "yaml" in req.content_type:
                return yaml.safe_load(raw.decode() or "null")
            return json.loads(raw.decode() or "null")
        except (ValueError, yaml.YAMLError) as err:
            raise errors.bad_request(f"error decoding request body: {err}") from err

    def _incoming(self, req: Request, body: Any) -> JSON:
        """A request body checked against the URL and converted to the storage shape."""
        rt = req.rt
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        if body.get("apiVersion", rt.api_version) != rt.api_version:
            raise errors.bad_request(
                f"the API version in the data ({body['apiVersion']}) does not match the expected API version ({rt.api_version})"
            )
        if body.get("kind", rt.kind) != rt.kind:
            raise errors.bad_request(
                f"the kind in the data ({body['kind']}) does not match the expected kind ({rt.kind})"
            )
        obj = kinds.to_internal(rt, body)
        try:
            kinds.canonical_timestamps(rt, obj)
        except kinds.TimestampError as err:
            raise errors.bad_request(str(err)) from err
        metadata = obj.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise errors.bad_request("metadata must be an object")
        if rt.namespaced:
            if metadata.get("namespace", req.namespace) != req.namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            metadata["namespace"] = req.namespace
        else:
            metadata.pop("namespace", None)
        return obj

    def _check_name(self, obj: JSON, name: str) -> None:
        given = obj["metadata"].setdefault("name", name)
        if given != name:
            raise errors.bad_request(
                f"the name of the object ({given}) does not match the name on the URL ({name})"
            )

    def _check_precondition(self, rt: ResourceType, old: JSON, incoming: JSON) -> None:
        metadata, current = incoming.get("metadata") or {}, old["metadata"]
        wanted_rv = metadata.get("resourceVersion")
        if wanted_rv and wanted_rv != current["resourceVersion"]:
            raise errors.conflict(rt.group, rt.plural, current["name"])
        wanted_uid = metadata.get("uid")
        if wanted_uid and wanted_uid != current["uid"]:
            raise errors.conflict(
                rt.group,
                rt.plural,
                current["name"],
                f"Precondition failed: UID in precondition: {wanted_uid}, UID in object meta: {current['uid']}",
            )

    def _prune(self, req: Request, obj: JSON) -> JSON:
        """Drop unknown fields of a custom resource, honouring ``fieldValidation``."""
        rt = req.rt
        if not rt.custom or rt.openapi_schema is None:
            return obj
        dropped: list[str] = []
        pruned: JSON = schema.prune(obj, rt.openapi_schema, dropped=dropped)
        directive = req.param("fieldValidation") or "Warn"
        if dropped and directive == "Strict":
            unknown = ", ".join(f'unknown field "{p}"' for p in dropped)
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: strict decoding error: {unknown}'
            )
        if directive == "Warn":
            req.warnings.extend(f'unknown field "{p}"' for p in dropped)
        return pruned

    def _validate(self, rt: ResourceType, obj: JSON) -> None:
        violations = kinds.validate_metadata(obj, rt)
        if rt.storage_key == CRD_KEY:
            violations += kinds.validate_crd(obj)
        if rt.custom and rt.openapi_schema is not None:
            violations += schema.validate(
                {k: v for k, v in obj.items() if k != "metadata"}, rt.openapi_schema
            )
        if violations:
            raise errors.invalid(rt.group, rt.kind, obj["metadata"].get("name", ""), violations)

    def external(self, rt: ResourceType, obj: JSON) -> JSON:
        """A stored object as clients of ``rt``'s group/version see it."""
        return kinds.to_external(rt, obj)

    def _after_write(self, rt: ResourceType) -> None:
        if rt.storage_key == CRD_KEY:
            self.registry.refresh(self.store.objects(CRD_KEY))

    def _persist(self, rt: ResourceType, old: JSON | None, new: JSON, dry_run: bool) -> JSON:
        if dry_run:
            result = copy.deepcopy(new)
            if old is None:
                result["metadata"].pop("resourceVersion", None)
            return result
        stored = self.store.put(rt.storage_key, new, old)
        self._after_write(rt)
        return stored

    # -- reads ----------------------------------------------------------------------------

    def get(self, req: Request) -> Response:
        return 200, self.external(req.rt, self._existing(req))

    def _matcher(self, req: Request) -> Callable[[JSON], bool]:
        try:
            labels = LabelSelector.parse(req.param("labelSelector"))
            fields = FieldSelector.parse(req.param("fieldSelector"), req.rt.selectable_fields)
        except SelectorError as err:
            raise errors.bad_request(str(err)) from err
        namespace = req.namespace

        def matches(obj: JSON) -> bool:
            metadata = obj.get("metadata") or {}
            if namespace and metadata.get("namespace") != namespace:
                return False
            return labels.matches(metadata.get("labels")) and fields.matches(obj)

        return matches

    def list_objects(self, req: Request) -> Response:
        rt, matches = req.rt, self._matcher(req)
        limit = self._int_param(req, "limit")
        plain = not req.param("labelSelector") and not req.param("fieldSelector")
        with self.store.lock:  # the stored objects themselves: only the page's are copied (external)
            list_rv, start, items = self._list_source(req)
            if start is not None:
                items = [i for i in items if self._key(i) > start]  # items are in key order
            if plain and limit:
                total = len(items)  # without selectors every item of the namespace matches
                selected = [self.external(rt, i) for i in items[:limit]]
            else:  # match a view of each object; copy only the page
                matched = [i for i in items if matches(kinds.to_external(rt, i, copied=False))]
                total = len(matched)
                selected = [self.external(rt, i) for i in (matched[:limit] if limit else matched)]
        metadata: JSON = {"resourceVersion": str(list_rv)}
        if limit and total > limit:
            selected = selected[:limit]
            metadata["continue"] = self._continue_token(list_rv, self._key(selected[-1]))
            if plain:
                metadata["remainingItemCount"] = total - limit
        if not rt.custom:
            for obj in selected:
                obj.pop("apiVersion", None)
                obj.pop("kind", None)
        return 200, {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": metadata,
            "items": selected,
        }

    def _list_source(self, req: Request) -> tuple[int, tuple[str, str] | None, list[JSON]]:
        """(list resourceVersion, continue-after key, stored objects) for a list request."""
        rt, current = req.rt, self.store.resource_version
        namespace = req.namespace or None
        if token := req.param("continue"):
            list_rv, start = self._parse_continue(token)
            try:
                return (
                    list_rv,
                    start,
                    [
                        o
                        for o in self.store.snapshot(rt.storage_key, list_rv, copies=False)
                        if namespace in (None, o["metadata"].get("namespace"))
                    ],
                )
            except Expired as err:
                raise errors.expired(
                    "The provided continue parameter is too old to display a consistent list result. "
                    "You can start a new list without the continue parameter."
                ) from err
        wanted = self._int_param(req, "resourceVersion")
        if wanted and wanted > current:
            raise errors.too_large_resource_version(wanted, current)
        if req.param("resourceVersionMatch") == "Exact":
            if not wanted:
                raise errors.bad_request(
                    'resourceVersionMatch: Forbidden: resourceVersionMatch "Exact" is forbidden for resourceVersion "0"'
                )
            try:
                return (
                    wanted,
                    None,
                    [
                        o
                        for o in self.store.snapshot(rt.storage_key, wanted, copies=False)
                        if namespace in (None, o["metadata"].get("namespace"))
                    ],
                )
            except Expired as err:
                raise errors.expired(f"The resourceVersion for the provided list is too old: {err}") from err
        return current, None, self.store.objects(rt.storage_key, namespace, copies=False)

    @staticmethod
    def _key(obj: JSON) -> tuple[str, str]:
        return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])

    @staticmethod
    def _continue_token(rv: int, key: tuple[str, str]) -> str:
        payload = {"v": "meta.k8s.io/v1", "rv": rv, "start": f"{key[0]}/{key[1]}\u0000"}
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()

    @staticmethod
    def _parse_continue(token: str) -> tuple[int, tuple[str, str]]:
        try:
            payload = json.loads(base64.urlsafe_b64decode(token.encode()))
            namespace, _, name = payload["start"].rstrip("\u0000").partition("/")
            return int(payload["rv"]), (namespace, name)
        except (ValueError, KeyError, binascii.Error) as err:
            raise errors.bad_request(f"continue key is not valid: {err}") from err

    @staticmethod
    def _int_param(req: Request, name: str) -> int:
        value = req.param(name)
        try:
            return int(value) if value else 0
        except ValueError as err:
            raise errors.bad_request(f"invalid {name}: {value!r}") from err

    # -- watch ----------------------------------------------------------------------------

    def watch(self, req: Request, heartbeat: float = 0.25) -> Generator[JSON | None, None, None]:
        """Watch events as JSON; ``None`` now and then so the caller can check its connection."""
        rt, matches = req.rt, self._matcher(req)
        timeout = float(req.param("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        bookmarks = _flag(req.param("allowWatchBookmarks"))
        send_initial = _flag(req.param("sendInitialEvents"))
        start = req.param("resourceVersion")
        with self.store.lock:
            if start in ("", "0") or send_initial:
                cursor = self.store.resource_version
                initial = [
                    self.external(rt, o) for o in self.store.objects(rt.storage_key, req.namespace or None)
                ]
            else:
                cursor, initial = self._int_param(req, "resourceVersion"), []
        yield from ({"type": "ADDED", "object": o} for o in initial if matches(o))
        if send_initial and bookmarks:
            yield self._bookmark(rt, cursor, initial_end=True)
        last_bookmark = time.monotonic()
        while not self.store.closed and (remaining := deadline - time.monotonic()) > 0:
            if self.registry.resolve(rt.group, rt.version, rt.plural) is None:
                return  # the CRD went away: real servers end such watches
            self.store.wait(cursor, min(remaining, heartbeat))
            self.finalize_namespaces()
            try:
                changes = self.store.changes_after(cursor)
            except Expired as err:
                yield {"type": "ERROR", "object": errors.expired(str(err)).status()}
                return
            for change in changes:
                cursor = change.rv
                if change.key == rt.storage_key and (event := self._event(rt, change, matches)):
                    yield event
            if bookmarks and time.monotonic() - last_bookmark >= self.bookmark_interval:
                last_bookmark = time.monotonic()
                yield self._bookmark(rt, cursor)
            yield None

    def _event(self, rt: ResourceType, change: Change, matches: Callable[[JSON], bool]) -> JSON | None:
        new = self.external(rt, change.obj)
        new_ok = matches(new)
        if change.type == "DELETED":
            return {"type": "DELETED", "object": new} if new_ok else None
        old_ok = (
            change.old is not None and change.type == "MODIFIED" and matches(self.external(rt, change.old))
        )
        if new_ok:
            return {"type": "MODIFIED" if old_ok else "ADDED", "object": new}
        return {"type": "DELETED", "object": new} if old_ok else None

    @staticmethod
    def _bookmark(rt: ResourceType, rv: int, *, initial_end: bool = False) -> JSON:
        metadata: JSON = {"resourceVersion": str(rv)}
        if initial_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": metadata},
        }

    # -- create ---------------------------------------------------------------------------

    def create(self, req: Request) -> Response:
        rt = req.rt
        if req.subresource:
            raise errors.method_not_allowed()
        obj = self._prune(req, self._incoming(req, self._decode(req)))
        if obj["metadata"].get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        with self.store.lock:
            self._require_namespace(rt, req.namespace)
            self._name(rt, obj)
            if self.store.get(rt.storage_key, req.namespace, obj["metadata"]["name"]) is not None:
                raise errors.already_exists(rt.group, rt.plural, obj["metadata"]["name"])
            obj = self._new_object(rt, obj)
            entries = managedfields.track_update(
                None,
                obj,
                manager=req.manager,
                api_version=rt.api_version,
                subresource="",
                shape=rt.shape,
                scope=_scope(rt, ""),
                now=self._now(),
            )
            return 201, self.external(rt, self._finish_create(req, obj, entries))

    def _name(self, rt: ResourceType, obj: JSON) -> None:
        metadata = obj["metadata"]
        if metadata.get("name"):
            return
        prefix = metadata.get("generateName")
        if not prefix:
            raise errors.invalid(
                rt.group, rt.kind, "", [("metadata.name", "Required value: name or generateName is required")]
            )
        namespace = metadata.get("namespace", "")
        while True:
            name = prefix + "".join(self._rng.choice(_NAME_CHARS) for _ in range(5))
            if self.store.get(rt.storage_key, namespace, name) is None:
                metadata["name"] = name
                return

    def _new_object(self, rt: ResourceType, obj: JSON) -> JSON:
        """A new object: system metadata set, defaulted, with its initial status."""
        obj = copy.deepcopy(obj)
        metadata = obj["metadata"]
        for key in (*_SYSTEM_METADATA, "resourceVersion", "managedFields", "selfLink"):
            metadata.pop(key, None)
        metadata["uid"] = self._uid()
        metadata["creationTimestamp"] = self._now()
        if rt.tracks_generation:
            metadata["generation"] = 1
        kinds.apply_defaults(rt, obj, None)
        if rt.has_status:
            obj.pop("status", None)
            if (status := kinds.initial_status(rt, obj, self._now())) is not None:
                obj["status"] = status
        return obj

    def _finish_create(self, req: Request, obj: JSON, entries: list[managedfields.Entry]) -> JSON:
        rt = req.rt
        self._validate(rt, obj)
        if managed := managedfields.encode(entries):
            obj["metadata"]["managedFields"] = managed
        return self._persist(rt, None, obj, req.dry_run)

    # -- update, patch, apply -------------------------------------------------------------

    def update(self, req: Request) -> Response:
        incoming = self._incoming(req, self._decode(req))
        self._check_name(incoming, req.name)
        with self.store.lock:
            old = self._existing(req)
            self._check_precondition(req.rt, old, incoming)
            explicit = incoming["metadata"].get("managedFields") not in (
                None,
                [],
                old["metadata"].get("managedFields"),
            )
            new = self._with_system_fields(req, old, incoming)
            return 200, self.external(req.rt, self._commit(req, old, new, explicit_managed_fields=explicit))

    def patch(self, req: Request) -> Response:
        content_type = req.content_type
        if content_type == APPLY:
            return self.apply(req)
        if content_type not in PATCH_TYPES or (content_type == STRATEGIC and req.rt.custom):
            accepted = [t for t in PATCH_TYPES if not (t == STRATEGIC and req.rt.custom)]
            raise errors.unsupported_media_type(content_type, accepted)
        patch = self._decode(req)
        with self.store.lock:
            old = self._existing(req)
            current = self.external(req.rt, old)
            try:
                patched = self._patched(req.rt, current, patch, content_type)
            except patches.PatchError as err:
                raise errors.unprocessable(str(err)) from err
            incoming = self._incoming(req, patched)
            self._check_name(incoming, req.name)
            self._check_precondition(req.rt, old, incoming)
            explicit = incoming["metadata"].get("managedFields") != old["metadata"].get("managedFields")
            new = self._with_system_fields(req, old, incoming)
            return 200, self.external(req.rt, self._commit(req, old, new, explicit_managed_fields=explicit))

    @staticmethod
    def _patched(rt: ResourceType, current: JSON, patch: Any, content_type: str) -> Any:
        if content_type == JSON_PATCH:
            return patches.json_patch(current, patch)
        if not isinstance(patch, dict):
            raise errors.bad_request("a merge patch must be a JSON object")
        if content_type == MERGE:
            return patches.merge_patch(current, patch)
        return patches.strategic_merge_patch(current, patch, rt.shape)

    def apply(self, req: Request) -> Response:
        rt = req.rt
        if not req.param("fieldManager"):
            raise errors.bad_request("fieldManager is required for apply requests")
        config = self._decode(req)
        if not isinstance(config, dict) or not config.get("apiVersion") or not config.get("kind"):
            raise errors.bad_request("apply patches must set apiVersion and kind")
        if (config.get("metadata") or {}).get("managedFields") is not None:
            raise errors.bad_request("metadata.managedFields must be nil")
        config = self._incoming(req, config)
        self._check_name(config, req.name)
        if req.subresource == "status":
            config = {k: v for k, v in config.items() if k in ("apiVersion", "kind", "metadata", "status")}
        elif rt.has_status:
            config.pop("status", None)
        config = self._prune(req, config)
        now, force = self._now(), _flag(req.param("force"))

        def merge(live: JSON | None) -> tuple[JSON, list[managedfields.Entry]]:
            return managedfields.apply(
                live,
                config,
                manager=req.manager,
                api_version=rt.api_version,
                subresource=req.subresource,
                shape=rt.shape,
                scope=_scope(rt, req.subresource),
                force=force,
                now=now,
            )

        with self.store.lock:
            old = self.store.get(rt.storage_key, req.namespace, req.name)
            if old is None:
                if req.subresource:
                    raise errors.not_found(rt.group, rt.plural, req.name)
                self._require_namespace(rt, req.namespace)
                merged, entries = merge(None)
                return 201, self.external(rt, self._finish_create(req, self._new_object(rt, merged), entries))
            self._check_precondition(rt, old, config)
            merged, entries = merge(old)
            new = self._with_system_fields(req, old, merged)
            return 200, self.external(rt, self._commit(req, old, new, entries=entries))

    def _with_system_fields(self, req: Request, old: JSON, incoming: JSON) -> JSON:
        """``incoming`` with what a client cannot change through this endpoint put back."""
        if req.subresource == "status":
            new = copy.deepcopy(old)
            if "status" in incoming:
                new["status"] = copy.deepcopy(incoming["status"])
            else:
                new.pop("status", None)
            return new
        new = copy.deepcopy(incoming)
        metadata, previous = new["metadata"], old["metadata"]
        for key in _SYSTEM_METADATA:
            if key in previous:
                metadata[key] = previous[key]
            else:
                metadata.pop(key, None)
        metadata["resourceVersion"] = previous["resourceVersion"]
        if not metadata.get("managedFields") and previous.get("managedFields"):
            metadata["managedFields"] = previous["managedFields"]
        if req.rt.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        return new

    def _commit(
        self,
        req: Request,
        old: JSON,
        new: JSON,
        *,
        entries: list[managedfields.Entry] | None = None,
        explicit_managed_fields: bool = False,
    ) -> JSON:
        """Finish a write to an existing object; a write that changes nothing is not stored.

        ``entries`` are the managed fields an apply computed; otherwise the write is tracked as an
        ``Update`` by ``req.manager``, unless the client set ``managedFields`` itself.
        """
        rt = req.rt
        if entries is None:  # an apply pruned its configuration already
            new = self._prune(req, new)
        kinds.apply_defaults(rt, new, old)
        if rt.storage_key == CRD_KEY and req.subresource != "status":
            new["status"] = kinds.crd_status(new, old.get("status"), self._now())
        self._validate(rt, new)
        self._check_finalizers(rt, old, new)
        if entries is None and not explicit_managed_fields:
            entries = managedfields.track_update(
                old,
                new,
                manager=req.manager,
                api_version=rt.api_version,
                subresource=req.subresource,
                shape=rt.shape,
                scope=_scope(rt, req.subresource),
                now=self._now(),
            )
        if entries is not None:
            new["metadata"]["managedFields"] = managedfields.encode(entries)
        if not new["metadata"].get("managedFields"):
            new["metadata"].pop("managedFields", None)
        if rt.tracks_generation and _content(rt, old) != _content(rt, new):
            new["metadata"]["generation"] = old["metadata"].get("generation", 0) + 1
        if new == old:
            return old
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._remove(rt, new, req.dry_run)
        return self._persist(rt, old, new, req.dry_run)

    @staticmethod
    def _check_finalizers(rt: ResourceType, old: JSON, new: JSON) -> None:
        if not old["metadata"].get("deletionTimestamp"):
            return
        added = set(new["metadata"].get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
        if added:
            message = "Forbidden: no new finalizers can be added if the object is being deleted"
            raise errors.invalid(
                rt.group, rt.kind, old["metadata"]["name"], [("metadata.finalizers", message)]
            )

    # -- delete ---------------------------------------------------------------------------

    def delete(self, req: Request) -> Response:
        options = self._decode(req) if req.body.strip() else {}
        preconditions = (options or {}).get("preconditions") or {}
        with self.store.lock:
            old = self._existing(req)
            if (want := preconditions.get("resourceVersion")) and want != old["metadata"]["resourceVersion"]:
                raise errors.conflict(
                    req.rt.group,
                    req.rt.plural,
                    req.name,
                    f"Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {old['metadata']['resourceVersion']}",
                )
            self._check_precondition(req.rt, old, {"metadata": {"uid": preconditions.get("uid")}})
            result = self._delete_object(req.rt, old, req.dry_run)
            finished = self.store.get(req.rt.storage_key, req.namespace, req.name) is None
        if finished and not self._returns_deleted(req.rt):
            details = {"name": req.name, "kind": req.rt.plural, "uid": old["metadata"]["uid"]}
            if req.rt.group:
                details["group"] = req.rt.group
            return 200, errors.status_body(200, "", "", details) | {"status": "Success"}
        return 200, self.external(req.rt, result)

    @staticmethod
    def _returns_deleted(rt: ResourceType) -> bool:
        """Whether a finished DELETE answers with the object (``ReturnDeletedObject``) or a Status."""
        return rt.custom or rt.kind in ("Namespace", "Service", "ServiceAccount", "CustomResourceDefinition")

    def delete_collection(self, req: Request) -> Response:
        rt, matches = req.rt, self._matcher(req)
        with self.store.lock:
            doomed = [
                o
                for o in self.store.objects(rt.storage_key, req.namespace or None)
                if matches(self.external(rt, o))
            ]
            deleted = [self.external(rt, self._delete_object(rt, o, req.dry_run)) for o in doomed]
            rv = self.store.resource_version
        return 200, {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(rv)},
            "items": deleted,
        }

    def _delete_object(self, rt: ResourceType, old: JSON, dry_run: bool) -> JSON:
        if rt.storage_key == NAMESPACE_KEY:
            return self._terminate_namespace(old, dry_run)
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp"):
                return old
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = self._now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if rt.tracks_generation:
                new["metadata"]["generation"] = new["metadata"].get("generation", 0) + 1
            return self._persist(rt, old, new, dry_run)
        return self._remove(rt, old, dry_run)

    def _terminate_namespace(self, old: JSON, dry_run: bool) -> JSON:
        """Namespaces go Terminating; their content and then they go a little later."""
        if old["metadata"].get("deletionTimestamp"):
            return old
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = self._now()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        new["status"] = {**(new.get("status") or {}), "phase": "Terminating"}
        namespace_rt = self.registry.resolve("", "v1", "namespaces")
        assert namespace_rt is not None
        stored = self._persist(namespace_rt, old, new, dry_run)
        if not dry_run:
            self._terminating[old["metadata"]["name"]] = time.monotonic() + self.namespace_deletion_delay
        return stored

    def _remove(self, rt: ResourceType, obj: JSON, dry_run: bool) -> JSON:
        if dry_run:
            return obj
        self._cascade(rt, obj)
        gone = self.store.delete(rt.storage_key, obj)
        self._after_write(rt)
        return gone

    def _cascade(self, rt: ResourceType, obj: JSON) -> None:
        """Delete the custom resources of a CRD being deleted (its cleanup finalizer would)."""
        if rt.storage_key != CRD_KEY:
            return
        spec = obj.get("spec") or {}
        key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        for victim in self.store.objects(key):
            self.store.delete(key, victim)
