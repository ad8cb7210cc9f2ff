"""Delivery records of every shape, and the check that a Cluster's field reads of them
(``ports.ReadsDeliveryFields``) say what the whole records say."""

from __future__ import annotations

from gitopsd import ports
from gitopsd.core import delivery as delivery_core
from gitopsd.model import delivery

NOW = "2026-01-01T00:00:00Z"


def records(cluster: str) -> list[delivery.Delivery]:
    """A delivered record with namespaced, cluster-scoped and grouped objects; a failed one that keeps
    an earlier inventory; an unreachable one with none."""
    inventory = (delivery.Entry("v1", "Namespace", "", "apps", "sha256:1"),
                 delivery.Entry("apps/v1", "Deployment", "apps", "web", "sha256:1"),
                 delivery.Entry("example.com/v1beta1", "Widget", "apps", "w"))
    return [
        delivery.Delivery(cluster=cluster, result=delivery.Result.DELIVERED, digest="sha256:" + "1" * 64, version="1.0.0",
                          message="delivered", inventory=inventory, at=NOW),
        delivery.Delivery(cluster=cluster, result=delivery.Result.FAILED, digest="sha256:" + "2" * 64, version="1.1.0",
                          message="stage stateless: refused", inventory=inventory[:1], at=NOW, reason="ApiRefused"),
        delivery.Delivery(cluster=cluster, result=delivery.Result.UNREACHABLE, digest="sha256:" + "3" * 64,
                          version="1.2.0", message="cannot reach", at=NOW, reason="ClusterUnreachable"),
    ]


def assert_fields_agree(store: ports.Cluster, namespace: str, clusters: set[str]) -> None:
    whole = store.deliveries(namespace)
    assert whole, "no record to compare"
    assert isinstance(store, ports.ReadsDeliveryFields)
    states = store.delivery_states(namespace)
    assert states == {name: (r.digest, str(r.result)) for name, r in whole.items()}
    some = sorted(whole)[:2]
    assert store.delivery_states(namespace, some) == {name: states[name] for name in some}
    for digest in ("sha256:" + "1" * 64, "sha256:" + "9" * 64):
        for resync in (False, True):  # the same decisions as from the whole records
            assert {n: delivery_core.action_of(s, digest, resync=resync) for n, s in states.items()} == \
                {n: delivery_core.action_for(r, digest, resync=resync) for n, r in whole.items()}
    every = {c: {e.key for r in whole.values() if r.cluster == c for e in r.inventory} for c in clusters}
    first = sorted(clusters)[0]
    for keys in (every, {first: set(sorted(every[first])[:1])}, {first: {("", "ConfigMap", "nowhere", "none")}}):
        held = store.delivery_holdings(namespace, keys)
        expected = {c: {n: {e.key for e in r.inventory} & set(keys[c]) for n, r in whole.items() if r.cluster == c}
                    for c in keys}
        assert held == {c: {n: k for n, k in v.items() if k} for c, v in expected.items() if any(v.values())}, keys
