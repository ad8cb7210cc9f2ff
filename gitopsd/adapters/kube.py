"""The management cluster on Kubernetes: ClusterPacks and PackInstances as custom resources.

The twin of ``gitopsd.adapters.localstore`` for the in-cluster mode, on the ``kubernetes`` client.
Objects are the same shapes (``gitopsd.core.codec`` reads them back): ClusterPacks are
``infrastructureclusterpacks.infrastructure.ontai.dev`` (kind InfrastructureClusterPack) and
PackInstances ``packinstances.infrastructure.ontai.dev``, both namespaced, both labelled
``app.kubernetes.io/managed-by=gitopsd``; only objects with that label are observed.

Reads come from a watch-backed cache: the first ``observe`` of a namespace lists each kind once,
then a thread per kind watches from the list's resourceVersion (bookmarks on, relist on 410 Gone,
reconnect with backoff when the connection drops). Every write's response goes into the cache too
(newer resourceVersion wins), so a pass that follows a pass sees its writes, and a pass where
nothing changed sends no request at all. Without ``watch`` (one-shot CLI commands) every
``observe`` lists instead.

Writes do only what the plan says, with field manager ``gitopsd``:

- ClusterPack CREATE: ``create`` (never an overwrite: an existing object with other content is an
  ``errors.ImmutabilityViolation``; one with the same checksum is adopted), then its status
  (``signed``, ``packSignature``, conditions) through ``/status``. UNINSTALL (pruned): ``delete``.
- PackInstance CREATE / SUPERSEDE: server-side apply of metadata and spec (``force`` for our own
  fields; the resourceVersion the plan saw as a precondition when the object existed), then
  server-side apply of the whole status on ``/status``. SUPERSEDE keeps the object (same uid).
  UNINSTALL: ``delete`` with a resourceVersion precondition (history lives in the Git status).
- BLOCKED with a condition: on a PackInstance, a status write of the conditions, only when they
  differ from the cached ones; on a ClusterPack, a Warning Event only (its status is not ours to
  flag: the pack is immutable and the plan stops talking about it once the version is bumped).
- A 409 Conflict is answered with a fresh read: when the object still has the content the plan
  was made from (the conflict came from someone touching nothing we read), the write is retried
  with the new resourceVersion, a bounded number of times; otherwise the pass fails with a
  transient Conflict and the next pass plans from the new state (no lost update).
- Every write and every failure records a core/v1 Event on the object; a repeated Warning is not
  sent again. Conditions are Ready / Reconciling / Stalled plus the plan's domain condition, each
  with ``observedGeneration``.

Atomicity: Kubernetes has no transactions, so the writes are ordered for convergence: ClusterPacks
are created before the PackInstances that point to them, BLOCKED status next, and deletions last
(instances, then pruned ClusterPacks). A PackInstance write counts as done only when its status
carries ``observedGeneration`` equal to ``metadata.generation``: ``observe`` reports an instance
whose spec write landed but whose status write did not as it was at its last completed write (or
as never installed), so the plan makes the same write again. A ClusterPack whose status write was
lost is completed by the next ``apply``. One failed object does not stop the others (instances of a
ClusterPack that could not be created are skipped); an unreachable or refusing API server stops
the pass at once.

Errors: 5xx, 429, timeouts and refused connections are ``errors.TransientError`` (reason
``ClusterUnavailable``); 401/403 are ``errors.ConfigError`` (``ClusterUnauthorized``, naming the
RBAC needed); a 404 listing the kinds is a ``ConfigError`` telling to apply ``deploy/10-crds.yaml``.
``gitopsd.adapters.lease`` elects the one replica that writes (``may_write``) and shards packs
(``owns``); ``gitopsd.wiring_kube`` builds this adapter from the command line.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import structlog
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from gitopsd import __version__, errors
from gitopsd.core import codec
from gitopsd.model import change, delivery, instance, pack

log = structlog.get_logger()

GROUP = pack.GROUP
VERSION = pack.API_VERSION.rpartition("/")[2]
API_VERSION = pack.API_VERSION
FIELD_MANAGER = "gitopsd"
DELIVERY_FIELD_MANAGER = "gitopsd-delivery"  # owns status.delivery of PackInstances
MANAGED_BY = "app.kubernetes.io/managed-by=gitopsd"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
LIST_PAGE = 500
MAX_EVENT_MESSAGE = 1024
# Blocked reasons that a later pass may clear by itself (retry), as opposed to needing a human.
TRANSIENT_BLOCKS = frozenset({"ArtifactPublishFailed"})
RBAC_NEEDED = (
    "get, list, watch, create, patch and delete on infrastructureclusterpacks and packinstances "
    "(infrastructure.ontai.dev), patch on their /status, create and patch on events"
)

JSON = dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    kind: str
    plural: str


CLUSTER_PACKS = Kind(pack.CLUSTER_PACK_KIND, "infrastructureclusterpacks")
PACK_INSTANCES = Kind(instance.PACK_INSTANCE_KIND, "packinstances")


def connect(*, kubeconfig: str | None = None, context: str | None = None, in_cluster: bool = False,
            user_agent: str | None = None) -> client.ApiClient:
    """An API client from a kubeconfig (``$KUBECONFIG``/``~/.kube/config`` by default) or in-cluster."""
    configuration = client.Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration,
                                    persist_config=False)
    except (config.ConfigException, OSError, ValueError, TypeError) as err:
        where = "the in-cluster ServiceAccount" if in_cluster else f"kubeconfig {kubeconfig or '(default)'}"
        what = f" context {context!r}" if context else ""
        raise errors.ConfigError(f"cannot load {where}{what}: {err}", reason="KubeconfigInvalid") from err
    api = client.ApiClient(configuration)
    api.user_agent = user_agent or f"gitopsd/{__version__}"
    return api


# -- errors -------------------------------------------------------------------------------------


def _status_of(err: ApiException) -> JSON:
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def translate(err: Exception, *, action: str, kind: Kind | str, namespace: str, name: str = "") -> errors.GitopsdError:
    """A library error as gitopsd's vocabulary (raise it ``from err``)."""
    if isinstance(err, errors.GitopsdError):
        return err
    label = kind.kind if isinstance(kind, Kind) else kind
    what = f"{label} {namespace}/{name}" if name else f"{label} objects in namespace {namespace}"
    if isinstance(err, ApiException):
        code = int(err.status or 0)
        status = _status_of(err)
        message = status.get("message") or err.reason or "no message"
        if code in (401, 403):
            return errors.ConfigError(
                f"the API server refused to {action} {what} ({code} {status.get('reason') or err.reason}: {message}); "
                f"the ServiceAccount needs {RBAC_NEEDED} in namespace {namespace}: kubectl apply -f deploy/20-rbac.yaml",
                reason="ClusterUnauthorized",
            )
        if code == 404:
            details = status.get("details") or {}
            if details.get("kind") == "namespaces":
                return errors.ConfigError(
                    f"namespace {namespace} does not exist: create it (kubectl apply -f deploy/00-namespace.yaml) or set "
                    "'namespace' in gitopsd.yaml",
                    reason="NamespaceNotFound",
                )
            if not details.get("name"):
                return errors.ConfigError(
                    f"the API server does not serve {label} ({GROUP}/{VERSION}): install the CRDs with "
                    "kubectl apply -f deploy/10-crds.yaml",
                    reason="CRDNotInstalled",
                )
            return errors.TransientError(f"{what} disappeared during the pass; the next pass reads it again", reason="Conflict")
        if code == 409:
            return errors.TransientError(f"cannot {action} {what}: {message}; the next pass retries", reason="Conflict")
        if code in (400, 422):
            return errors.StalledError(
                f"the API server rejected {what} ({code} {status.get('reason') or ''}: {message}); if the cluster's CRDs "
                "are older than this gitopsd, update them: kubectl apply -f deploy/10-crds.yaml",
                reason="InvalidObject",
            )
        return errors.TransientError(f"cannot {action} {what}: {code} {message}", reason="ClusterUnavailable")
    if isinstance(err, (urllib3.exceptions.HTTPError, OSError)):
        return errors.TransientError(f"cannot reach the API server to {action} {what}: {err}", reason="ClusterUnavailable")
    return errors.TransientError(f"cannot {action} {what}: {err!r}", reason="ClusterUnavailable")


# -- requests -----------------------------------------------------------------------------------


def _rv(obj: Mapping[str, Any] | None) -> int:
    """An object's resourceVersion as an integer (etcd revisions are); 0 when absent or opaque."""
    if not obj:
        return 0
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _content(obj: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    """What a write is based on: spec, status, labels, annotations, deletion (not bookkeeping)."""
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    return (obj.get("spec"), obj.get("status"), meta.get("labels"), meta.get("annotations"), meta.get("deletionTimestamp"))


class Requests:
    """Every API call of the adapter: raw JSON in and out, counted, writes gated by leadership."""

    def __init__(self, api: client.ApiClient, *, may_write: Callable[[], bool], timeout: float) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.may_write = may_write
        self.timeout = timeout
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def count(self, verb: str, resource: str) -> None:
        with self._lock:
            self.counts[f"{verb} {resource}"] += 1

    def send(self, verb: str, resource: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> JSON:
        """Call ``method`` with ``_preload_content=False`` and parse the body (this client drops the
        body of answers it has no declared type for, such as the 201 of an apply that creates)."""
        if verb not in ("get", "list", "watch") and not self.may_write():
            raise errors.TransientError("this replica is not the leader any more: write skipped", reason="NotLeader")
        self.count(verb, resource)
        kwargs.setdefault("_request_timeout", self.timeout)
        response = method(*args, _preload_content=False, **kwargs)
        try:
            data = response.data
            return json.loads(data) if data else {}
        finally:
            response.release_conn()

    def open(self, verb: str, resource: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A streaming response (a watch): the caller reads and closes it."""
        self.count(verb, resource)
        return method(*args, _preload_content=False, **kwargs)


# -- the cache ------------------------------------------------------------------------------------


class Informer:
    """One kind in one namespace: a list, then a watch thread that keeps ``items`` current."""

    def __init__(self, requests: Requests, kind: Kind, namespace: str, *, watch_timeout: int,
                 backoff: tuple[float, float]) -> None:
        self.requests = requests
        self.kind = kind
        self.namespace = namespace
        self.watch_timeout = max(1, watch_timeout)
        self.backoff = backoff
        self.lock = threading.RLock()
        self.items: dict[str, JSON] = {}
        self.version = 0  # bumped whenever ``items`` changes
        self.resource_version = ""
        self.synced = False  # False until listed, and again after a 410 until relisted
        self.unread = False  # listed and not yet observed (a one-shot observe need not list again)
        self.stale = False  # the watch cannot connect: ``items`` may lag; observe relists
        self._tombstones: dict[str, int] = {}
        self._stop = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None

    # -- list -----------------------------------------------------------------------------

    def relist(self) -> None:
        """Read every managed object of the kind (in pages) and make it the cache's content."""
        items: dict[str, JSON] = {}
        token: str | None = None
        list_rv = 0
        while True:
            try:
                body = self.requests.send(
                    "list", self.kind.plural, self.requests.custom.list_namespaced_custom_object,
                    GROUP, VERSION, self.namespace, self.kind.plural,
                    label_selector=MANAGED_BY, limit=LIST_PAGE, _continue=token,
                )
            except Exception as err:
                raise translate(err, action="list", kind=self.kind, namespace=self.namespace) from err
            if not list_rv:
                list_rv = _rv(body)
            for obj in body.get("items") or []:
                obj.setdefault("apiVersion", API_VERSION)
                obj.setdefault("kind", self.kind.kind)
                items[obj["metadata"]["name"]] = obj
            token = (body.get("metadata") or {}).get("continue") or None
            if token is None:
                break
        with self.lock:
            for name, obj in self.items.items():  # written by us after the list was served
                if _rv(obj) > list_rv:
                    items[name] = obj
            for name, gone in self._tombstones.items():
                if gone > list_rv:
                    items.pop(name, None)
            self._tombstones = {n: r for n, r in self._tombstones.items() if r > list_rv}
            if items != self.items:
                self.items = items
                self.version += 1
            self.resource_version = str(list_rv)
            self.synced, self.stale, self.unread = True, False, True

    # -- updates (watch events and our own writes) ------------------------------------------

    def upsert(self, obj: JSON) -> None:
        name, rv = obj["metadata"]["name"], _rv(obj)
        obj.setdefault("apiVersion", API_VERSION)
        obj.setdefault("kind", self.kind.kind)
        with self.lock:
            if name in self._tombstones and rv <= self._tombstones[name]:
                return
            current = self.items.get(name)
            if current is not None and _rv(current) >= rv:
                return
            self._tombstones.pop(name, None)
            self.items[name] = obj
            self.version += 1

    def remove(self, name: str, rv: int) -> None:
        with self.lock:
            current = self.items.get(name)
            if current is not None and _rv(current) > rv:
                return
            self._tombstones[name] = max(rv, self._tombstones.get(name, 0))
            if current is not None:
                del self.items[name]
                self.version += 1

    def get(self, name: str) -> JSON | None:
        with self.lock:
            return self.items.get(name)

    def snapshot(self) -> list[JSON]:
        with self.lock:
            return list(self.items.values())

    # -- watch ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"gitopsd-watch:{self.namespace}/{self.kind.plural}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _delay(self, failures: int) -> float:
        base, cap = self.backoff
        return min(cap, base * 2 ** min(failures - 1, 30)) * random.uniform(0.8, 1.0)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if not self.synced:
                    self.relist()
                    log.info("relisted", kind=self.kind.kind, namespace=self.namespace, resource_version=self.resource_version)
                response = self.requests.open(
                    "watch", self.kind.plural, self.requests.custom.list_namespaced_custom_object,
                    GROUP, VERSION, self.namespace, self.kind.plural,
                    label_selector=MANAGED_BY, watch=True, allow_watch_bookmarks=True,
                    resource_version=self.resource_version, timeout_seconds=self.watch_timeout,
                    _request_timeout=(10, self.watch_timeout + 30),
                )
            except Exception as err:  # noqa: BLE001 - a watch that cannot start retries with backoff, never dies
                if self._stop.is_set():
                    break
                if isinstance(err, ApiException) and err.status == 410:
                    self.synced = False
                    continue
                failures += 1
                self.stale = True
                delay = self._delay(failures)
                log.warning("watch cannot connect", kind=self.kind.kind, namespace=self.namespace, retry_in=round(delay, 2),
                            error=str(translate(err, action="watch", kind=self.kind, namespace=self.namespace)))
                self._stop.wait(delay)
                continue
            self.stale = False
            self._response = response
            opened = time.monotonic()
            try:
                events = self._consume(response)
                if events or time.monotonic() - opened >= 1.0:
                    failures = 0
                elif not self._stop.is_set() and self.synced:  # closed at once, nothing sent: do not spin
                    failures += 1
                    self._stop.wait(self._delay(failures))
            except Exception as err:  # noqa: BLE001 - the connection dropped mid-stream: resume from the last rv
                if self._stop.is_set():
                    break
                failures += 1
                log.info("watch dropped", kind=self.kind.kind, namespace=self.namespace, error=repr(err))
                self._stop.wait(self._delay(failures))
            finally:
                self._response = None
                with contextlib.suppress(Exception):
                    # A watch left mid-stream (410, stop, a dropped event) still has bytes in flight:
                    # close its connection rather than hand them to the pool's next request.
                    response.close()
                    response.release_conn()

    def _consume(self, response: Any) -> int:
        """Apply a watch stream to the cache until it ends; returns the events it carried."""
        events = 0
        for line in iter_resp_lines(response):
            if self._stop.is_set():
                return events
            if not line:
                continue
            event = json.loads(line)
            events += 1
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    log.info("watch expired", kind=self.kind.kind, namespace=self.namespace, message=obj.get("message"))
                    self.synced = False
                    return events
                raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if kind in ("ADDED", "MODIFIED"):
                self.upsert(obj)
            elif kind == "DELETED":
                self.remove(obj["metadata"]["name"], _rv(obj))
            if rv:
                with self.lock:
                    self.resource_version = str(rv)
                    passed = int(rv) if str(rv).isdigit() else 0
                    self._tombstones = {n: r for n, r in self._tombstones.items() if r > passed}
        return events


# -- conditions and presentation ------------------------------------------------------------------


def conditions(domain: Sequence[instance.Condition], *, generation: int, now: str,
               previous: Sequence[Mapping[str, Any]] = (), transient: bool = False) -> list[JSON]:
    """Ready, Reconciling, Stalled and the domain conditions, with observedGeneration.

    ``domain`` is what the plan says: a successful write gives ``Ready=True``; a blocked change
    gives its condition (``PackCollisionDetected``, ``SignatureInvalid``, ``Ready=False``...), which
    makes Ready False and Stalled True (Reconciling True instead when ``transient``).
    """
    given = {c.type: c for c in domain}
    ready = given.get("Ready")
    problem = next((c for c in domain if c.type != "Ready"), None) or (ready if ready and ready.status != "True" else None)
    if ready is None:
        assert problem is not None
        ready = instance.Condition("Ready", "False", problem.reason, problem.message)
    if problem is None:
        reconciling = instance.Condition("Reconciling", "False", "Succeeded", "up to date")
        stalled = instance.Condition("Stalled", "False", "Succeeded", "up to date")
    elif transient:
        reconciling = instance.Condition("Reconciling", "True", problem.reason, problem.message)
        stalled = instance.Condition("Stalled", "False", problem.reason, "retried on the next pass")
    else:
        reconciling = instance.Condition("Reconciling", "False", problem.reason, "waits for a change in Git")
        stalled = instance.Condition("Stalled", "True", problem.reason, problem.message)
    ordered = [ready, reconciling, stalled, *(c for c in domain if c.type not in ("Ready", "Reconciling", "Stalled"))]
    before = {str(c.get("type")): c for c in previous}
    out = []
    for c in ordered:
        old = before.get(c.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == c.status and old.get("lastTransitionTime") else now
        out.append({**c.to_json(), "observedGeneration": generation, "lastTransitionTime": since})
    return out


def _without_times(items: Sequence[Mapping[str, Any]] | None) -> list[JSON]:
    return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in items or ()]


def _observed_generation(status: Mapping[str, Any]) -> int | None:
    values = [c.get("observedGeneration") for c in status.get("conditions") or () if isinstance(c, Mapping)]
    numbers = [v for v in values if isinstance(v, int)]
    return max(numbers) if numbers else None


def present_instance(obj: Mapping[str, Any]) -> instance.PackInstance:
    """A PackInstance as of its last completed write (see the module docstring)."""
    status = obj.get("status") or {}
    try:
        pi = codec.pack_instance_from_object(obj)
    except (KeyError, TypeError, ValueError) as err:
        log.warning("unreadable PackInstance", name=obj["metadata"]["name"], error=repr(err))
        return _never_installed(obj)
    if not status.get("state"):
        return dataclasses.replace(pi, state=instance.InstallState.UNINSTALLED, history=(), conditions=())
    generation = (obj.get("metadata") or {}).get("generation")
    observed = _observed_generation(status)
    if isinstance(generation, int) and observed is not None and observed < generation:
        last = pi.history[-1] if pi.history else None
        if last is None:
            return dataclasses.replace(pi, state=instance.InstallState.UNINSTALLED)
        return dataclasses.replace(
            pi,
            version=str(status.get("version") or last.pack_version),
            cluster_pack=last.cluster_pack,
            manifest_digest=last.artifact.rpartition("@")[2],
            checksum="",  # unknown: the plan writes the instance again
        )
    return pi


def _never_installed(obj: Mapping[str, Any]) -> instance.PackInstance:
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    return instance.PackInstance(
        name=meta["name"], namespace=meta.get("namespace", ""), base_pack_name=str(spec.get("basePackName", "")),
        cluster=str(spec.get("cluster", "")), cluster_pack="", version="", manifest_digest="", checksum="", priority=0,
        source_build_ref="", revision="", state=instance.InstallState.UNINSTALLED,
        uid=meta.get("uid"), resource_version=meta.get("resourceVersion"),
    )


def _base_of(obj: Mapping[str, Any]) -> str:
    spec = obj.get("spec") or {}
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return str(spec.get("basePackName") or labels.get("ontai.dev/base-pack") or "")


def write_order(c: change.Change) -> int:
    """ClusterPacks before the instances that point to them; blocked status; deletions last."""
    if c.kind is change.ObjectKind.CLUSTER_PACK and c.action is change.Action.CREATE:
        return 0
    if c.kind is change.ObjectKind.PACK_INSTANCE and c.action in (change.Action.CREATE, change.Action.SUPERSEDE):
        return 1
    if c.action is change.Action.BLOCKED:
        return 2
    if c.kind is change.ObjectKind.PACK_INSTANCE:
        return 3
    return 4


# -- the adapter ------------------------------------------------------------------------------------


def created_message(source_build_ref: str, commit: str) -> str:
    """The Ready message of a created ClusterPack, from its spec alone: a status rewritten after a
    lost write reads the same as the first one."""
    return f"created from {source_build_ref} at {commit}"


class KubeCluster:
    """``ports.Cluster`` on the Kubernetes API. Close it to stop its watches."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        watch: bool = True,
        owns: Callable[[str], bool] | None = None,
        may_write: Callable[[], bool] | None = None,
        identity: str = "gitopsd",
        request_timeout: float = 30.0,
        watch_timeout: int = 300,
        conflict_retries: int = 5,
        backoff: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self.api = api
        self.watch = watch
        self.owns = owns or (lambda _: True)
        self.identity = identity
        self.requests = Requests(api, may_write=may_write or (lambda: True), timeout=request_timeout)
        self.watch_timeout = watch_timeout
        self.conflict_retries = max(1, conflict_retries)
        self.backoff = backoff
        self.writes = 0
        self._informers: dict[tuple[str, str], Informer] = {}
        self._lock = threading.Lock()
        self._observed: dict[str, tuple[tuple[int, int], instance.Observed]] = {}
        self._basis: dict[str, dict[tuple[str, str], JSON]] = {}
        self._events: collections.OrderedDict[tuple[str, ...], tuple[str, int]] = collections.OrderedDict()
        self._last_warning: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._event_serial = 0

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            informers, self._informers = list(self._informers.values()), {}
        for informer in informers:
            informer.stop()

    def __enter__(self) -> KubeCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def informer(self, kind: Kind, namespace: str) -> Informer:
        """The cache of one kind in one namespace, listed (and watched) on first use."""
        key = (kind.plural, namespace)
        with self._lock:
            found = self._informers.get(key)
        if found is not None:
            return found
        created = Informer(self.requests, kind, namespace, watch_timeout=self.watch_timeout, backoff=self.backoff)
        created.relist()
        with self._lock:
            found = self._informers.setdefault(key, created)
        if found is created and self.watch:
            created.start()
        return found

    # -- observe ----------------------------------------------------------------------------

    def observe(self, namespace: str) -> instance.Observed:
        packs = self.informer(CLUSTER_PACKS, namespace)
        instances = self.informer(PACK_INSTANCES, namespace)
        for informer in (packs, instances):
            if (not self.watch and not informer.unread) or informer.stale or not informer.synced:
                informer.relist()
            informer.unread = False
        key = (packs.version, instances.version)
        cached = self._observed.get(namespace)
        if cached is not None and cached[0] == key:
            return cached[1]
        basis: dict[tuple[str, str], JSON] = {}
        found_packs: dict[str, instance.ObservedPack] = {}
        found_instances: dict[str, instance.PackInstance] = {}
        for obj in packs.snapshot():
            if self.owns(_base_of(obj)):
                p = codec.observed_pack_from_object(obj)
                found_packs[p.name] = p
                basis[(CLUSTER_PACKS.plural, p.name)] = obj
        for obj in instances.snapshot():
            if self.owns(_base_of(obj)):
                pi = present_instance(obj)
                found_instances[pi.name] = pi
                basis[(PACK_INSTANCES.plural, pi.name)] = obj
        observed = instance.Observed(packs=found_packs, instances=found_instances)
        self._observed[namespace] = (key, observed)
        self._basis[namespace] = basis
        return observed

    # -- delivery records -------------------------------------------------------------------

    def deliveries(self, namespace: str) -> dict[str, delivery.Delivery]:
        """``status.delivery`` of the PackInstances in the cache (no request once it is listed)."""
        out = {}
        for obj in self.informer(PACK_INSTANCES, namespace).snapshot():
            raw = (obj.get("status") or {}).get("delivery")
            if raw and self.owns(_base_of(obj)):
                out[obj["metadata"]["name"]] = delivery.Delivery.from_json(raw)
        return out

    def record_delivery(self, namespace: str, name: str, record: delivery.Delivery, now: str) -> None:
        """Server-side apply of ``status.delivery`` alone, by field manager ``gitopsd-delivery``:
        the plan's own status writes (manager ``gitopsd``) leave it in place, and it leaves theirs."""
        body = {"apiVersion": API_VERSION, "kind": PACK_INSTANCES.kind, "metadata": {"name": name, "namespace": namespace},
                "status": {"delivery": record.to_json()}}
        try:
            written = self.requests.send(
                "apply", f"{PACK_INSTANCES.plural}/status", self.requests.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, namespace, PACK_INSTANCES.plural, name, body,
                field_manager=DELIVERY_FIELD_MANAGER, force=True, _content_type=APPLY_PATCH,
            )
        except ApiException as err:
            if err.status == 404:
                return  # uninstalled meanwhile: its delivery record went with it
            raise translate(err, action="write the delivery status of", kind=PACK_INSTANCES, namespace=namespace,
                            name=name) from err
        except Exception as err:
            raise translate(err, action="write the delivery status of", kind=PACK_INSTANCES, namespace=namespace,
                            name=name) from err
        self.informer(PACK_INSTANCES, namespace).upsert(written)
        type_ = "Normal" if record.result in (delivery.Result.DELIVERED, delivery.Result.PRUNED) else "Warning"
        self._event(namespace, PACK_INSTANCES, name, type_, str(record.result), record.message, now, written)

    # -- apply ------------------------------------------------------------------------------

    def apply(self, namespace: str, changes: Sequence[change.Change], revision: str, now: str) -> int:
        """Execute the plan's writes in convergent order; returns the objects written."""
        self.informer(CLUSTER_PACKS, namespace)
        self.informer(PACK_INSTANCES, namespace)
        basis = self._basis.get(namespace, {})
        written = self._complete_packs(namespace, now)
        failed_packs: set[str] = set()
        first_error: errors.GitopsdError | None = None
        for c in sorted(changes, key=write_order):
            target = c.pack_instance.cluster_pack if c.pack_instance is not None else None
            if c.action in (change.Action.CREATE, change.Action.SUPERSEDE) and target in failed_packs:
                continue  # its ClusterPack could not be created: the next pass retries both
            try:
                written += self._apply_one(namespace, c, basis, revision, now)
            except errors.GitopsdError as err:
                if isinstance(err, errors.ConfigError) or err.reason in ("ClusterUnavailable", "NotLeader"):
                    raise
                log.warning("write failed", kind=str(c.kind), name=c.name, reason=err.reason, error=str(err))
                kind = CLUSTER_PACKS if c.kind is change.ObjectKind.CLUSTER_PACK else PACK_INSTANCES
                self._event(namespace, kind, c.name, "Warning", err.reason, str(err), now)
                first_error = first_error or err
                if c.kind is change.ObjectKind.CLUSTER_PACK:
                    failed_packs.add(c.name)
        self.writes += written
        if first_error is not None:
            raise first_error
        return written

    def _apply_one(self, namespace: str, c: change.Change, basis: Mapping[tuple[str, str], JSON], revision: str, now: str) -> int:
        note = f"{c.reason} (revision {revision})"
        if c.kind is change.ObjectKind.CLUSTER_PACK:
            if c.action is change.Action.CREATE:
                assert c.cluster_pack is not None
                self._create_pack(namespace, c.cluster_pack, note, revision, now)
                return 1
            if c.action is change.Action.UNINSTALL:
                return self._delete(namespace, CLUSTER_PACKS, c.name, basis, "Pruned", note, now)
            if c.action is change.Action.BLOCKED and c.condition is not None:
                self._event(namespace, CLUSTER_PACKS, c.name, "Warning", c.reason, c.condition.message, now)
            return 0
        if c.action in (change.Action.CREATE, change.Action.SUPERSEDE):
            assert c.pack_instance is not None
            reason = "Installed" if c.action is change.Action.CREATE else str(c.direction or "Superseded")
            self._write_instance(namespace, c.pack_instance, basis, reason, note, now)
            return 1
        if c.action is change.Action.UNINSTALL:
            return self._delete(namespace, PACK_INSTANCES, c.name, basis, "Uninstalled", note, now)
        if c.action is change.Action.BLOCKED and c.condition is not None:
            return self._block_instance(namespace, c, now)
        return 0

    # -- ClusterPacks -------------------------------------------------------------------------

    def _create_pack(self, namespace: str, cp: pack.ClusterPack, note: str, revision: str, now: str) -> None:
        body: JSON = cp.to_object()
        status = cast(JSON, body.pop("status"))
        body["metadata"] = {**body["metadata"], "namespace": namespace}
        informer = self.informer(CLUSTER_PACKS, namespace)
        obj: JSON | None = None
        for attempt in self._attempts(f"create ClusterPack {namespace}/{cp.name}"):
            try:
                obj = self.requests.send("create", CLUSTER_PACKS.plural, self.requests.custom.create_namespaced_custom_object,
                                         GROUP, VERSION, namespace, CLUSTER_PACKS.plural, body, field_manager=FIELD_MANAGER)
                break
            except ApiException as err:
                if err.status != 409:
                    raise translate(err, action="create", kind=CLUSTER_PACKS, namespace=namespace, name=cp.name) from err
                fresh = self._get(CLUSTER_PACKS, namespace, cp.name)
                if fresh is None:
                    attempt.retry(err)
                    continue
                spec = fresh.get("spec") or {}
                if spec.get("checksum") == cp.checksum and (spec.get("registryRef") or {}).get("digest") == cp.manifest_digest:
                    obj = fresh  # our own create whose answer was lost: same content, adopt it
                    break
                raise errors.ImmutabilityViolation(
                    f"ClusterPack {namespace}/{cp.name} appeared in the cluster during the pass with checksum "
                    f"{spec.get('checksum')} instead of {cp.checksum}; published versions are immutable: bump 'version' "
                    f"in {cp.source_build_ref}",
                ) from err
        assert obj is not None
        informer.upsert(obj)
        generation = int(obj["metadata"].get("generation") or 1)
        status["conditions"] = conditions(
            (instance.Condition("Ready", "True", "Created", created_message(cp.source_build_ref, cp.provenance.commit)),),
            generation=generation, now=now,
        )
        obj = self._write_status(namespace, CLUSTER_PACKS, obj, status)
        self._event(namespace, CLUSTER_PACKS, cp.name, "Normal", "Created", f"ClusterPack {cp.name} created: {note}", now, obj)

    def _complete_packs(self, namespace: str, now: str) -> int:
        """Write the status of ClusterPacks whose status write was lost after their create."""
        done = 0
        for obj in self.informer(CLUSTER_PACKS, namespace).snapshot():
            meta = obj["metadata"]
            if (obj.get("status") or {}).get("conditions") or not self.owns(_base_of(obj)):
                continue
            signature = (meta.get("annotations") or {}).get(pack.SIGNATURE_ANNOTATION)
            status: JSON = {"signed": signature is not None}
            if signature is not None:
                status["packSignature"] = signature
            status["conditions"] = conditions(
                (instance.Condition("Ready", "True", "Created", created_message(
                    str((obj.get("spec") or {}).get("sourceBuildRef", "")),
                    str(((obj.get("spec") or {}).get("provenance") or {}).get("commit", "")))),),
                generation=int(meta.get("generation") or 1), now=now,
            )
            try:
                self._write_status(namespace, CLUSTER_PACKS, obj, status)
            except errors.TransientError as err:
                # Another writer (a replica, or the CLI) was between its create and its status write
                # when this cache saw the object; once that status is there, there is nothing to complete.
                current = self.informer(CLUSTER_PACKS, namespace).get(meta["name"])
                if err.reason != "Conflict" or not ((current or {}).get("status") or {}).get("conditions"):
                    raise
                continue
            done += 1
        return done

    # -- PackInstances ------------------------------------------------------------------------

    def _write_instance(self, namespace: str, pi: instance.PackInstance, basis: Mapping[tuple[str, str], JSON],
                        reason: str, note: str, now: str) -> None:
        body: JSON = codec.pack_instance_object(pi)
        status = cast(JSON, body.pop("status"))
        meta: JSON = {**body["metadata"], "namespace": namespace}
        obj: JSON | None = None
        expected = basis.get((PACK_INSTANCES.plural, pi.name))
        rv = pi.resource_version if expected is not None else None
        informer = self.informer(PACK_INSTANCES, namespace)
        for attempt in self._attempts(f"apply PackInstance {namespace}/{pi.name}"):
            body["metadata"] = {**meta, "resourceVersion": rv} if rv else meta
            try:
                obj = self.requests.send(
                    "apply", PACK_INSTANCES.plural, self.requests.custom.patch_namespaced_custom_object,
                    GROUP, VERSION, namespace, PACK_INSTANCES.plural, pi.name, body,
                    field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH,
                )
                break
            except ApiException as err:
                if err.status != 409:
                    raise translate(err, action="apply", kind=PACK_INSTANCES, namespace=namespace, name=pi.name) from err
                rv = self._fresh_basis(namespace, PACK_INSTANCES, pi.name, expected, err)
                attempt.retry(err)
        assert obj is not None
        informer.upsert(obj)
        previous = (expected or {}).get("status") or {}
        status["conditions"] = conditions(pi.conditions, generation=int(obj["metadata"].get("generation") or 1), now=now,
                                          previous=previous.get("conditions") or ())
        obj = self._write_status(namespace, PACK_INSTANCES, obj, status)
        self._event(namespace, PACK_INSTANCES, pi.name, "Normal", reason, f"{pi.cluster_pack}: {note}", now, obj)

    def _block_instance(self, namespace: str, c: change.Change, now: str) -> int:
        assert c.condition is not None
        existing = self.informer(PACK_INSTANCES, namespace).get(c.name)
        if existing is None:
            self._event(namespace, PACK_INSTANCES, c.name, "Warning", c.reason, c.condition.message, now)
            return 0
        status = dict(existing.get("status") or {})
        generation = int(existing["metadata"].get("generation") or 1)
        # keep the generation of the last completed write: a block does not complete a spec write
        observed = _observed_generation(status) or generation
        wanted = conditions((c.condition,), generation=observed, now=now, previous=status.get("conditions") or (),
                            transient=c.reason in TRANSIENT_BLOCKS)
        if _without_times(wanted) == _without_times(status.get("conditions")):
            return 0
        status["conditions"] = wanted
        obj = self._write_status(namespace, PACK_INSTANCES, existing, status)
        self._event(namespace, PACK_INSTANCES, c.name, "Warning", c.reason, c.condition.message, now, obj)
        return 1

    # -- shared writes --------------------------------------------------------------------------

    def _write_status(self, namespace: str, kind: Kind, obj: JSON, status: JSON) -> JSON:
        """Server-side apply of the whole status on ``/status``, based on ``obj``."""
        name = obj["metadata"]["name"]
        expected, rv = obj, obj["metadata"].get("resourceVersion")
        written: JSON | None = None
        for attempt in self._attempts(f"apply {kind.kind} {namespace}/{name} status"):
            body = {"apiVersion": API_VERSION, "kind": kind.kind,
                    "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv}, "status": status}
            try:
                written = self.requests.send(
                    "apply", f"{kind.plural}/status", self.requests.custom.patch_namespaced_custom_object_status,
                    GROUP, VERSION, namespace, kind.plural, name, body,
                    field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH,
                )
                break
            except ApiException as err:
                if err.status != 409:
                    raise translate(err, action="write the status of", kind=kind, namespace=namespace, name=name) from err
                rv = self._fresh_basis(namespace, kind, name, expected, err)
                attempt.retry(err)
        assert written is not None
        self.informer(kind, namespace).upsert(written)
        return written

    def _delete(self, namespace: str, kind: Kind, name: str, basis: Mapping[tuple[str, str], JSON],
                reason: str, note: str, now: str) -> int:
        expected = basis.get((kind.plural, name))
        rv = (expected or {}).get("metadata", {}).get("resourceVersion")
        gone: JSON = {}
        for attempt in self._attempts(f"delete {kind.kind} {namespace}/{name}"):
            options = {"preconditions": {"resourceVersion": rv}} if rv else None
            try:
                gone = self.requests.send("delete", kind.plural, self.requests.custom.delete_namespaced_custom_object,
                                          GROUP, VERSION, namespace, kind.plural, name, body=options)
                break
            except ApiException as err:
                if err.status == 404:
                    self.informer(kind, namespace).remove(name, _rv(expected))
                    return 0  # already gone
                if err.status != 409:
                    raise translate(err, action="delete", kind=kind, namespace=namespace, name=name) from err
                rv = self._fresh_basis(namespace, kind, name, expected, err)
                attempt.retry(err)
        deleted_rv = _rv(gone) if gone.get("kind") == kind.kind else _rv(expected)
        self.informer(kind, namespace).remove(name, deleted_rv)
        self._event(namespace, kind, name, "Normal", reason, f"{kind.kind} {name} deleted: {note}", now, expected)
        return 1

    def _fresh_basis(self, namespace: str, kind: Kind, name: str, expected: JSON | None, err: ApiException) -> str | None:
        """After a 409: the current resourceVersion when the object still has the content the
        write was based on; otherwise the write would lose someone's update, so give up."""
        fresh = self._get(kind, namespace, name)
        if fresh is not None:
            self.informer(kind, namespace).upsert(fresh)
        if _content(fresh) != _content(expected):
            raise errors.TransientError(
                f"{kind.kind} {namespace}/{name} changed since it was read; not overwriting that change: the next pass "
                "plans from the new state",
                reason="Conflict",
            ) from err
        return None if fresh is None else fresh["metadata"].get("resourceVersion")

    def _get(self, kind: Kind, namespace: str, name: str) -> JSON | None:
        try:
            return self.requests.send("get", kind.plural, self.requests.custom.get_namespaced_custom_object,
                                      GROUP, VERSION, namespace, kind.plural, name)
        except ApiException as err:
            if err.status == 404 and (_status_of(err).get("details") or {}).get("name"):
                return None
            raise translate(err, action="read", kind=kind, namespace=namespace, name=name) from err
        except Exception as err:
            raise translate(err, action="read", kind=kind, namespace=namespace, name=name) from err

    def _attempts(self, what: str) -> Iterator[_Attempt]:
        """Bounded retries after conflicts: ``for attempt in ...: try ... break / attempt.retry(err)``."""
        for number in range(self.conflict_retries):
            attempt = _Attempt(number, self.conflict_retries, what)
            yield attempt
            if not attempt.again:
                return
            time.sleep(min(self.backoff[1], self.backoff[0] * 2**number) * random.uniform(0.5, 1.0))
        raise errors.TransientError(f"{what}: still conflicting after {self.conflict_retries} tries; the next pass retries",
                                    reason="Conflict")

    # -- events ---------------------------------------------------------------------------------

    def _event(self, namespace: str, kind: Kind, name: str, type_: str, reason: str, message: str, now: str,
               obj: Mapping[str, Any] | None = None) -> None:
        """Record a core/v1 Event (best effort: a lost event never fails a pass)."""
        message = message if len(message) <= MAX_EVENT_MESSAGE else message[: MAX_EVENT_MESSAGE - 3] + "..."
        subject = (namespace, kind.kind, name)
        if obj is None:
            with self._lock:
                informer = self._informers.get((kind.plural, namespace))
            obj = informer.get(name) if informer is not None else None
        if type_ == "Warning" and self._last_warning.get(subject) == (reason, message):
            return  # the same warning again: like Kubernetes, do not repeat it
        key = (*subject, type_, reason, message)
        try:
            if key in self._events:
                event_name, count = self._events[key]
                self.requests.send("patch", "events", self.requests.core.patch_namespaced_event, event_name, namespace,
                                   {"count": count + 1, "lastTimestamp": now}, field_manager=FIELD_MANAGER,
                                   _content_type=MERGE_PATCH)
                self._events[key] = (event_name, count + 1)
                self._events.move_to_end(key)
            else:
                self._event_serial += 1
                event_name = f"{name}.{time.time_ns():x}{self._event_serial:x}"[:253]
                meta = (obj or {}).get("metadata") or {}
                involved: JSON = {"apiVersion": API_VERSION, "kind": kind.kind, "name": name, "namespace": namespace}
                if meta.get("uid"):
                    involved["uid"] = meta["uid"]
                body = {
                    "apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": event_name, "namespace": namespace},
                    "involvedObject": involved, "reason": reason, "message": message, "type": type_,
                    "source": {"component": "gitopsd"}, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
                    "reportingComponent": "gitopsd", "reportingInstance": self.identity,
                    "action": "Reconcile",
                }
                self.requests.send("create", "events", self.requests.core.create_namespaced_event, namespace, body,
                                   field_manager=FIELD_MANAGER)
                self._events[key] = (event_name, 1)
                while len(self._events) > 1000:
                    self._events.popitem(last=False)
        except Exception as err:  # noqa: BLE001 - an event is best effort: a failed one is logged, never raised
            if isinstance(err, ApiException) and err.status == 404 and key in self._events:
                del self._events[key]  # expired: the next one is created anew
            log.warning("event not recorded", kind=kind.kind, name=name, reason=reason, error=str(translate(
                err, action="record an event about", kind=kind, namespace=namespace, name=name)))
            return
        if type_ == "Warning":
            self._last_warning[subject] = (reason, message)
        else:
            self._last_warning.pop(subject, None)


class _Attempt:
    """One try of a write; ``retry(err)`` asks for another (bounded by ``KubeCluster._attempts``)."""

    def __init__(self, number: int, limit: int, what: str) -> None:
        self.number, self.limit, self.what = number, limit, what
        self.again = False

    def retry(self, err: Exception) -> None:
        self.again = True
        log.info("conflict, retrying", what=self.what, attempt=self.number + 1, of=self.limit,
                 error=getattr(err, "reason", str(err)))
