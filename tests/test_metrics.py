"""Metrics: what a real pass over examples-repo turns into, read back through the text format."""

from __future__ import annotations

import pathlib

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gitopsd import metrics, reconcile
from gitopsd.cli import run as cli_run
from gitopsd.core import delivery as delivery_core
from gitopsd.model import delivery


def samples(m: metrics.Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def one_pass(repo: pathlib.Path, state_dir: pathlib.Path) -> reconcile.PassState:
    with cli_run.open_local_env(repo, state_dir, signing_key=None, trusted_keys=None, registry_url=None) as env:
        return reconcile.run(env)


def test_a_pass_with_writes_then_one_without(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    m = metrics.Metrics()
    first = one_pass(examples, state_dir)
    committed = metrics.commit_seconds(first.tree.snapshot.commit_time)  # type: ignore[union-attr]
    assert committed is not None
    m.pass_finished(first, 0.2, now=committed + 42.0)
    second = one_pass(examples, state_dir)
    m.pass_finished(second, 0.05, now=committed + 100.0)
    got = samples(m)
    assert got[("gitopsd_reconcile_duration_seconds_count", (("result", "ready"),))] == 2
    assert got[("gitopsd_reconcile_duration_seconds_sum", (("result", "ready"),))] == pytest.approx(0.25)
    assert got[("gitopsd_reconcile_duration_seconds_count", (("result", "error"),))] == 0
    # only the first pass wrote: one latency sample, of 42 s
    assert got[("gitopsd_commit_to_applied_seconds_count", ())] == 1
    assert got[("gitopsd_commit_to_applied_seconds_sum", ())] == 42.0
    assert got[("gitopsd_changes_total", (("action", "create"), ("kind", "ClusterPack")))] == 5
    assert got[("gitopsd_changes_total", (("action", "create"), ("kind", "PackInstance")))] == 15
    assert not any(name == "gitopsd_changes_total" and ("action", "unchanged") in labels for name, labels in got)
    assert got[("gitopsd_last_applied_info", (("revision", second.revision),))] == 1
    assert got[("gitopsd_packs", ())] == 5
    assert got[("gitopsd_last_success_timestamp_seconds", ())] == committed + 100.0


def test_failed_pack_and_failed_pass_count_as_errors_by_reason(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    (examples / "packs" / "observability" / "packbuild.yaml").write_text("name: [broken\n")
    m = metrics.Metrics()
    state = one_pass(examples, state_dir)
    m.pass_finished(state, 0.1, now=0.0)
    m.failed("RegistryUnavailable", 2.0)
    m.failed("RemoteUnreachable", None)  # a failed head(): counted, but no pass duration
    got = samples(m)
    assert state.summary is not None and [e.reason for e in state.summary.errors] == ["InvalidYAML"]
    assert got[("gitopsd_errors_total", (("reason", "InvalidYAML"),))] == 1
    assert got[("gitopsd_errors_total", (("reason", "RegistryUnavailable"),))] == 1
    assert got[("gitopsd_errors_total", (("reason", "RemoteUnreachable"),))] == 1
    assert got[("gitopsd_reconcile_duration_seconds_count", (("result", "not_ready"),))] == 1
    assert got[("gitopsd_reconcile_duration_seconds_count", (("result", "error"),))] == 1
    assert got[("gitopsd_packs", ())] == 5  # four compiled and the broken one


COMMIT_TIMES = {
    "utc-z": ("2026-01-01T00:00:00Z", 1767225600.0),
    "offset": ("2026-01-01T01:00:00+01:00", 1767225600.0),
    "naive-is-utc": ("2026-01-01T00:00:00", 1767225600.0),
    "garbage": ("yesterday", None),
    "empty": ("", None),
}


@pytest.mark.parametrize(("text", "expected"), COMMIT_TIMES.values(), ids=COMMIT_TIMES.keys())
def test_commit_seconds(text: str, expected: float | None) -> None:
    assert metrics.commit_seconds(text) == expected


def test_two_instances_do_not_share_state() -> None:
    a, b = metrics.Metrics(), metrics.Metrics()
    a.failed("X", 1.0)
    assert 'gitopsd_errors_total{reason="X"}' in a.exposition().decode()
    assert 'gitopsd_errors_total{reason="X"}' not in b.exposition().decode()


def test_deliveries_are_counted_by_action_and_result_with_apply_time_and_drift(examples: pathlib.Path,
                                                                               state_dir: pathlib.Path) -> None:
    state = one_pass(examples, state_dir)

    def job(instance: str, cluster: str, action: delivery_core.Action) -> delivery_core.Job:
        return delivery_core.Job(instance=instance, cluster=cluster, base_pack_name="p", version="1.0.0",
                                 spec_json='{"registryRef": {"digest": "sha256:1"}}', signature="s", previous=None, action=action)

    def record(result: delivery.Result, *, seconds: tuple[float, ...] = (), drifted: tuple[str, ...] = ()) -> delivery.Delivery:
        return delivery.Delivery(cluster="x", result=result, digest="sha256:1", version="1.0.0", message="",
                                 stages=tuple(delivery.StageRun(f"s{i}", 1, s, True) for i, s in enumerate(seconds)), drifted=drifted)

    state.deliveries = [
        (job("p-a", "a", delivery_core.Action.DELIVER), record(delivery.Result.DELIVERED, seconds=(1.0, 2.0))),
        (job("p-b", "b", delivery_core.Action.DELIVER), record(delivery.Result.TIMED_OUT, seconds=(0.5,))),
        (job("q-a", "a", delivery_core.Action.DRIFT), record(delivery.Result.DELIVERED, drifted=("ConfigMap/x/y", "Deployment/x/z"))),
    ]
    m = metrics.Metrics()
    m.pass_finished(state, 0.1, now=0.0)

    got = samples(m)
    assert got[("gitopsd_deliveries_total", (("action", "deliver"), ("result", "Delivered")))] == 1
    assert got[("gitopsd_deliveries_total", (("action", "deliver"), ("result", "TimedOut")))] == 1
    assert got[("gitopsd_deliveries_total", (("action", "drift"), ("result", "Delivered")))] == 1
    assert got[("gitopsd_delivery_apply_duration_seconds_count", ())] == 2
    assert got[("gitopsd_delivery_apply_duration_seconds_sum", ())] == pytest.approx(3.5)
    assert got[("gitopsd_drifted_objects", (("cluster", "a"),))] == 2
