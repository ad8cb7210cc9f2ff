"""gitopsd.adapters.kube.connection.translate: API errors become typed gitopsd errors, decided from the
HTTP status code and the Status object's details (never from a message). The adapter's control
flow then goes by class: ``ClusterUnavailable``, ``NotLeader`` and ``ConfigError`` stop a pass,
a ``Conflict`` is what a stale write meets. No cluster needed."""

from __future__ import annotations

import json

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from gitopsd import errors
from gitopsd.adapters import kube
from gitopsd.adapters.kube import cluster, writes


def api_error(code: int, details: dict[str, str] | None = None, message: str = "whatever the server says") -> ApiException:
    err = ApiException(status=code, reason="Reason")
    err.body = json.dumps({"kind": "Status", "code": code, "message": message, "details": details or {}})
    return err


CASES = {
    "unauthorized": (api_error(401), errors.ConfigError, "ClusterUnauthorized"),
    "forbidden": (api_error(403), errors.ConfigError, "ClusterUnauthorized"),
    "no-namespace": (api_error(404, {"kind": "namespaces", "name": "ns"}), errors.ConfigError, "NamespaceNotFound"),
    "no-crds": (api_error(404), errors.ConfigError, "CRDNotInstalled"),
    "object-gone": (api_error(404, {"kind": "packinstances", "name": "p"}), errors.Conflict, "Conflict"),
    "conflict": (api_error(409), errors.Conflict, "Conflict"),
    "invalid": (api_error(422), errors.StalledError, "InvalidObject"),
    "bad-request": (api_error(400), errors.StalledError, "InvalidObject"),
    "throttled": (api_error(429), errors.ClusterUnavailable, "ClusterUnavailable"),
    "server-error": (api_error(503), errors.ClusterUnavailable, "ClusterUnavailable"),
    # the message says "conflict": the status code decides, not the words
    "a-500-that-says-conflict": (api_error(500, message="Operation cannot be fulfilled: conflict"), errors.ClusterUnavailable,
                                 "ClusterUnavailable"),
    "refused-connection": (urllib3.exceptions.NewConnectionError(None, "refused"), errors.ClusterUnavailable,  # type: ignore[arg-type]
                           "ClusterUnavailable"),
    "os-error": (ConnectionResetError("reset"), errors.ClusterUnavailable, "ClusterUnavailable"),
    "already-ours": (errors.NotLeader("not the leader"), errors.NotLeader, "NotLeader"),
}


@pytest.mark.parametrize(("err", "kind", "reason"), CASES.values(), ids=CASES.keys())
def test_api_errors_become_typed_errors(err: Exception, kind: type[errors.GitopsdError], reason: str) -> None:
    translated = kube.translate(err, action="apply", kind=kube.PACK_INSTANCES, namespace="ns", name="p")
    assert type(translated) is kind
    assert translated.reason == reason


def test_the_typed_errors_keep_their_families_and_reasons() -> None:
    for cls, reason in ((errors.ClusterUnavailable, "ClusterUnavailable"), (errors.NotLeader, "NotLeader"),
                        (errors.Conflict, "Conflict")):
        err = cls("m")
        assert isinstance(err, errors.TransientError) and err.transient and err.reason == reason


def test_errors_that_stop_a_pass_are_decided_by_class() -> None:
    stops = cluster.STOPS_THE_PASS
    assert isinstance(errors.ClusterUnavailable("m"), stops) and isinstance(errors.NotLeader("m"), stops)
    assert isinstance(errors.ConfigError("m"), stops)
    assert not isinstance(errors.Conflict("m"), stops)
    # a plain transient error that merely carries the reason's word is not one of them
    assert not isinstance(errors.TransientError("m", reason="ClusterUnavailable"), stops)


def test_a_write_that_is_not_the_leaders_is_refused_before_it_is_sent() -> None:
    requests = kube.Requests(kube.client.ApiClient(), may_write=lambda: False, timeout=1)
    with pytest.raises(errors.NotLeader):
        requests.send("apply", "packinstances", lambda *a, **k: pytest.fail("sent"))
    assert not requests.counts


def test_conflict_retries_are_bounded_and_end_in_a_conflict() -> None:
    writer = writes.Writer(kube.Requests(kube.client.ApiClient(), may_write=lambda: True, timeout=1),
                           informer=lambda kind, namespace: pytest.fail("no cache needed"),  # type: ignore[arg-type,return-value]
                           events=None, owns=lambda _: True, conflict_retries=3, backoff=(0.0, 0.0))  # type: ignore[arg-type]
    tries = 0
    with pytest.raises(errors.Conflict, match="still conflicting after 3 tries"):
        for attempt in writer.attempts("apply PackInstance ns/p"):
            tries += 1
            attempt.retry(api_error(409))
    assert tries == 3
