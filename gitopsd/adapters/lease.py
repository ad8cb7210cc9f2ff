"""Leader election on a ``coordination.k8s.io/v1`` Lease, and sharding packs across leaders.

Several ``gitopsd run`` replicas may run against one management cluster; only the holder of the
Lease writes. The algorithm is client-go's ``leaderelection`` (no home-made cluster layer):

- every ``retry_period`` an :class:`Elector` reads the Lease; a leader renews it every
  ``renew_deadline / 2`` instead (every ``retry_period`` after a failed renew), so a pass of
  minutes does not send an update every two seconds. A follower takes it over only when
  the record has not changed for ``lease_duration`` *as measured on its own monotonic clock since
  it last saw the record change* (so clock skew between nodes does not matter), or when the holder
  released it (empty ``holderIdentity``);
- acquire and renew are a ``create`` or a ``replace`` carrying the ``resourceVersion`` that was
  read: of two contenders one wins, the other gets 409 Conflict and stays a follower;
- the holder counts itself leader only while its last successful renew *started* less than
  ``renew_deadline`` ago (``renew_deadline < lease_duration``): a holder that cannot renew
  (partitioned, stalled) stops writing before anyone else may take over. :meth:`Elector.is_leader`
  is checked by the Kubernetes adapter right before every write request.

A stopped elector releases the Lease (``holderIdentity`` emptied) so a successor takes over at its
next retry instead of after a whole lease duration; a crashed one is replaced within about
``lease_duration + retry_period``.

Sharding (``--shard i/N``): :func:`shard_filter` partitions packs by a stable hash of their
basePackName (sha256, identical on every machine and Python version). Each shard elects its own
leader on the Lease named by :func:`lease_name`; ``gitopsd.adapters.kube`` applies the same filter
to what it observes so a shard never uninstalls another shard's PackInstances.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gitopsd import errors

log = structlog.get_logger()

LEASE_NAME = "gitopsd-leader"
FIELD_MANAGER = "gitopsd"


def lease_name(shard: tuple[int, int] | None) -> str:
    """``gitopsd-leader``, or ``gitopsd-shard-i-of-N`` for one shard of N."""
    if shard is None:
        return LEASE_NAME
    index, count = shard
    return f"gitopsd-shard-{index}-of-{count}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/3"`` -> ``(1, 3)``; shards are numbered from 0."""
    index_text, slash, count_text = text.partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        index, count = -1, 0
    if not slash or count < 1 or not 0 <= index < count:
        raise errors.UsageError(f"{errors.setting('shard')} {text!r}: expected i/N with 0 <= i < N, e.g. 0/2", setting="shard")
    return index, count


def shard_of(base_pack_name: str, count: int) -> int:
    """The shard of a pack: sha256 of its basePackName, as a big-endian integer, modulo ``count``."""
    digest = hashlib.sha256(base_pack_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_filter(index: int, count: int) -> Callable[[str], bool]:
    """The ``reconcile.Env.pack_filter`` of shard ``index`` of ``count``."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} is not within 0..{count - 1}")

    def owns(base_pack_name: str) -> bool:
        return shard_of(base_pack_name, count) == index

    return owns


def default_identity() -> str:
    """``$POD_NAME`` in a Pod (the Deployment sets it), else ``hostname-pid``."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def _micro_time(moment: float) -> str:
    """A ``metav1.MicroTime``: RFC 3339 in UTC with microseconds."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    """One contender for one Lease. ``start()`` runs the election in a thread; ``stop()`` ends it.

    ``clock`` is monotonic seconds and ``wall`` epoch seconds (injectable for tests). The callbacks
    run in the elector's thread and must not block.
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        name: str = LEASE_NAME,
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        request_timeout: float = 5.0,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise errors.ConfigError(
                f"leader election needs retry period ({retry_period}s) < renew deadline ({renew_deadline}s) "
                f"< lease duration ({lease_duration}s)",
                reason="Usage",
            )
        self.leases = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.request_timeout = min(request_timeout, renew_deadline)
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.clock = clock
        self.wall = wall
        self.transitions = 0  # times this elector became leader
        self.last_error: errors.GitopsdError | None = None  # why the last round failed, when it said why
        self._lock = threading.Lock()
        self._leading = False
        self._renewed_at = float("-inf")  # monotonic start of the last successful acquire/renew
        self._observed: tuple[str, str, str] | None = None  # (holder, renewTime, resourceVersion)
        self._observed_at = float("-inf")
        self._written: dict[str, Any] | None = None  # the Lease as this elector last wrote it, while leading
        self._stop = threading.Event()
        self._became_leader = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the rest of gitopsd asks ----------------------------------------------------

    def is_leader(self) -> bool:
        """True only while the last renew started less than ``renew_deadline`` ago."""
        with self._lock:
            return self._leading and self.clock() - self._renewed_at < self.renew_deadline

    def wait_until_leader(self, timeout: float | None = None) -> bool:
        return self._became_leader.wait(timeout) and self.is_leader()

    @property
    def holder(self) -> str:
        """The holder this elector last saw on the Lease ('' when free or unknown)."""
        return self._observed[0] if self._observed else ""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Elector:
        if self._thread is not None:
            raise RuntimeError("the elector is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"gitopsd-lease:{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop contending; a leader releases the Lease unless ``release`` is False (a crash)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.request_timeout + self.retry_period + 1)
            self._thread = None
        written = self._written
        was_leading = self._set_leading(False)
        if release and was_leading:
            self._release(written)

    def __enter__(self) -> Elector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            try:
                acquired = self.try_acquire_or_renew()
            except Exception as err:  # noqa: BLE001 - a failed attempt is a lost round, never a dead thread
                self.last_error = err if isinstance(err, errors.GitopsdError) else None
                log.warning("lease attempt failed", lease=self.name, identity=self.identity, error=str(err))
                acquired = False
            else:
                self.last_error = None
            if not acquired and self._leading and self.clock() - self._renewed_at >= self.renew_deadline:
                log.warning("leadership lost", lease=self.name, identity=self.identity,
                            note=f"no renew for {self.renew_deadline}s")
                self._set_leading(False)
            self._stop.wait(self.next_round_in(started, acquired=acquired))

    def next_round_in(self, started: float, *, acquired: bool) -> float:
        """Seconds until the round after one that began at ``started``: a leader that has just renewed
        waits until half its renew deadline has passed (should that renew fail, the rounds every
        ``retry_period`` after it still fit before the deadline); anyone else tries again every
        ``retry_period``. A leader sends one update every ``renew_deadline / 2`` seconds, not one
        every ``retry_period``."""
        period = self.renew_interval if acquired and self._leading else self.retry_period
        return max(0.0, period - (self.clock() - started))

    @property
    def renew_interval(self) -> float:
        return max(self.retry_period, self.renew_deadline / 2)

    def try_acquire_or_renew(self) -> bool:
        """One round: read the Lease, then create, renew or take it over when allowed. A leader first
        renews from the Lease it wrote last, without reading it (one request a round instead of
        two); a conflict there means someone else wrote it since, and the round goes on with a read."""
        started = self.clock()
        if self._leading and self._written is not None and self._renew_written(started):
            return True
        current = self._read()
        now = self.wall()
        if current is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(acquire_time=_micro_time(now), renew_time=_micro_time(now), transitions=0),
            }
            try:
                written = self._call(self.leases.create_namespaced_lease, self.namespace, body)
            except ApiException as err:
                if err.status == 409:
                    return False  # another contender created it first
                raise
            self._won(written, started)
            return True

        spec = current.get("spec") or {}
        metadata = current["metadata"]
        holder = spec.get("holderIdentity") or ""
        record = (holder, str(spec.get("renewTime") or ""), str(metadata.get("resourceVersion", "")))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        if holder and holder != self.identity and self.clock() < self._observed_at + self.lease_duration:
            if self._leading:
                self._set_leading(False)
            return False
        renewing = holder == self.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if renewing else 1)
        acquire_time = str(spec["acquireTime"]) if renewing and spec.get("acquireTime") else _micro_time(now)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {**metadata, "resourceVersion": metadata["resourceVersion"]},
            "spec": self._spec(acquire_time=acquire_time, renew_time=_micro_time(now), transitions=transitions),
        }
        try:
            written = self._call(self.leases.replace_namespaced_lease, self.name, self.namespace, body)
        except ApiException as err:
            if err.status == 409:
                return False  # someone renewed or took it since the read: lost this round
            raise
        self._won(written, started)
        return True

    def _renew_written(self, started: float) -> bool:
        last = self._written
        assert last is not None
        spec = last.get("spec") or {}
        body = {**last, "spec": self._spec(acquire_time=str(spec.get("acquireTime") or _micro_time(self.wall())),
                                           renew_time=_micro_time(self.wall()),
                                           transitions=int(spec.get("leaseTransitions") or 0))}
        try:
            written = self._call(self.leases.replace_namespaced_lease, self.name, self.namespace, body)
        except ApiException as err:
            if err.status in (404, 409):
                self._written = None
                return False  # changed or deleted since this elector wrote it: read it and decide again
            raise
        self._won(written, started)
        return True

    # -- helpers ----------------------------------------------------------------------------

    def _spec(self, *, acquire_time: str, renew_time: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": acquire_time,
            "renewTime": renew_time,
            "leaseTransitions": transitions,
        }

    def _won(self, written: dict[str, Any], started: float) -> None:
        self._written = written
        spec = written.get("spec") or {}
        self._observed = (self.identity, str(spec.get("renewTime") or ""), str(written["metadata"].get("resourceVersion", "")))
        self._observed_at = self.clock()
        with self._lock:
            self._renewed_at = started
        if self._set_leading(True) is False:
            self.transitions += 1
            log.info("leadership acquired", lease=self.name, identity=self.identity)

    def _set_leading(self, leading: bool) -> bool:
        """Set the state; returns the previous one and runs the callbacks on a change."""
        if not leading:
            self._written = None
        with self._lock:
            previous, self._leading = self._leading, leading
            if leading:
                self._became_leader.set()
            else:
                self._became_leader.clear()
        if previous != leading:
            callback = self.on_started_leading if leading else self.on_stopped_leading
            if callback is not None:
                callback()
        return previous

    def _release(self, written: dict[str, Any] | None = None) -> None:
        """Empty the holder so a successor need not wait out the lease (best effort). From the Lease
        this elector wrote last, without a read; when someone wrote it since (409), read and decide."""
        with contextlib.suppress(Exception):
            current = written
            for _ in range(2):
                if current is None:
                    current = self._read()
                if current is None or (current.get("spec") or {}).get("holderIdentity") != self.identity:
                    return
                spec = dict(current["spec"])
                spec.update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _micro_time(self.wall())})
                try:
                    self._call(self.leases.replace_namespaced_lease, self.name, self.namespace, {**current, "spec": spec})
                except ApiException as err:
                    if err.status != 409 or written is None:
                        raise
                    current, written = None, None  # changed since this elector wrote it: read it once
                    continue
                log.info("leadership released", lease=self.name, identity=self.identity)
                return

    def _read(self) -> dict[str, Any] | None:
        try:
            return self._call(self.leases.read_namespaced_lease, self.name, self.namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def _call(self, method: Callable[..., Any], *args: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": self.request_timeout}
        if method != self.leases.read_namespaced_lease:
            kwargs["field_manager"] = FIELD_MANAGER
        try:
            response = method(*args, **kwargs)
        except ApiException as err:
            if err.status == 404 and method == self.leases.create_namespaced_lease:  # a replace's 404: the Lease went
                raise errors.ConfigError(
                    f"namespace {self.namespace} does not exist, so Lease {self.namespace}/{self.name} cannot be "
                    "created: create the namespace or elect the leader in another one",
                    reason="LeaseNamespaceNotFound",
                ) from err
            if err.status in (401, 403):
                raise errors.ConfigError(
                    f"the API server refused access to Lease {self.namespace}/{self.name} ({err.status}): the "
                    f"ServiceAccount needs get, create and update on leases.coordination.k8s.io in {self.namespace} "
                    "(deploy/20-rbac.yaml)",
                    reason="ClusterUnauthorized",
                ) from err
            raise
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise errors.TransientError(f"Lease {self.namespace}/{self.name}: {err}", reason="ClusterUnavailable") from err
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()
