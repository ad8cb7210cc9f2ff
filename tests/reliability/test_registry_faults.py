"""Registry faults against the real registry (Debian's docker-registry on loopback), through
``gitopsd reconcile --registry`` and, where a timeout must be short, the pass built in-process.

A proxy on loopback (``harness.FaultProxy``) sits in front of the registry and misbehaves: down,
500s, connection resets, a few 503s, slow answers, a corrupted blob, a lying digest header, a
lying HEAD. Every time: retries are bounded (at most 1 + 2 attempts per request, and the pass ends
in bounded time), the pass reports the failure on the packs it concerns (blocked, the next pass
retries), and no ClusterPack is ever delivered whose artifact the registry does not serve exactly
(checked straight against the registry, not through the proxy). Then the fault goes away and the
next pass delivers everything.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
from collections.abc import Iterator

import pytest

from gitopsd import reconcile
from gitopsd.adapters import keys
from gitopsd.adapters import registry as registry_adapter
from gitopsd.wiring import compose as wiring
from gitopsd.wiring import settings as wiring_settings
from tests import registry_fixture
from tests.reliability import harness

pytestmark = pytest.mark.slow

EXAMPLE_PACKS = harness.example_packs()
MAX_ATTEMPTS = 3  # the adapter's first try and its two retries


@pytest.fixture
def proxy(plain_registry: registry_fixture.RunningRegistry) -> Iterator[harness.FaultProxy]:
    fault = harness.FaultProxy(plain_registry.host)
    yield fault
    fault.close()


@pytest.fixture
def setup(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    repo = tmp_path / "repo"
    shutil.copytree(harness.EXAMPLES, repo)
    return repo, keys.generate(tmp_path / "key").private_path


def reconcile_cli(zygotes: harness.ZygotePool, repo: pathlib.Path, state: pathlib.Path, key: pathlib.Path,
                  registry: str, cwd: pathlib.Path) -> tuple[harness.Run, dict]:
    run = zygotes.run("reconcile", str(repo), "--state-dir", str(state), "--signing-key", str(key), "--registry", registry,
                      "--registry-insecure", "-o", "json", cwd=cwd, timeout=120)
    assert "Traceback" not in run.stderr, run.describe()
    assert run.returncode in (0, 1), run.describe()
    return run, json.loads(run.stdout)


def blocked(result: dict, reason: str) -> dict[str, str]:
    """ClusterPack name -> condition message of every ClusterPack change blocked for ``reason``."""
    return {c["name"]: c["condition"]["message"] for c in result["changes"]
            if c["kind"] == "ClusterPack" and c["action"] == "blocked" and c["reason"] == reason}


def assert_only_verified_packs_delivered(state: pathlib.Path, registry_host: str, path: str) -> int:
    """Every ClusterPack in the store is served by the registry itself (not the proxy) with exactly
    its digests, and every PackInstance points at one of them. Returns how many were checked."""
    direct = registry_adapter.OciRegistry(f"{registry_host}/{path}", insecure=True)
    packs = harness.store_objects(state, harness.CLUSTER_PACK)
    for obj in packs:
        spec = obj["spec"]
        layers = {f: spec[f] for f in ("rbacDigest", "clusterScopedDigest", "workloadDigest") if spec.get(f)}
        problems = direct.verify(spec["basePackName"], spec["registryRef"]["digest"], layers)
        assert problems == [], (obj["metadata"]["name"], problems)
    names = {o["metadata"]["name"] for o in packs}
    for inst in harness.store_objects(state, harness.PACK_INSTANCE):
        assert inst["spec"]["clusterPackRef"]["name"] in names, inst["metadata"]["name"]
    return len(packs)


def assert_bounded(proxy: harness.FaultProxy) -> None:
    """No request was tried more than ``MAX_ATTEMPTS`` times in a row without an answer below 500."""
    worst, streaks = proxy.longest_streak()
    assert worst <= MAX_ATTEMPTS, sorted(streaks.items(), key=lambda kv: -kv[1])[:3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_registry_down_blocks_every_pack_and_delivers_nothing(zygotes: harness.ZygotePool, setup, fresh_path: str,
                                                                      tmp_path: pathlib.Path) -> None:
    repo, key = setup
    run, result = reconcile_cli(zygotes, repo, tmp_path / "state", key, f"127.0.0.1:{free_port()}/{fresh_path}", tmp_path)
    assert run.returncode == 1
    failed = blocked(result, "ArtifactPublishFailed")
    assert len(failed) == len(EXAMPLE_PACKS), result["changes"]
    assert all("RegistryUnavailable" in m and "the next pass retries" in m for m in failed.values()), failed
    assert harness.store_objects(tmp_path / "state", harness.CLUSTER_PACK) == []
    assert harness.store_objects(tmp_path / "state", harness.PACK_INSTANCE) == []
    harness.CHAOS.append(("registry down", 1, 0, 0))


@pytest.mark.parametrize("mode", ["500", "reset"])
def test_registry_errors_are_retried_a_bounded_number_of_times_then_the_next_pass_delivers(
        mode: str, zygotes: harness.ZygotePool, proxy: harness.FaultProxy, plain_registry: registry_fixture.RunningRegistry,
        setup, fresh_path: str, tmp_path: pathlib.Path) -> None:
    repo, key = setup
    state = tmp_path / "state"
    proxy.mode = mode
    run, result = reconcile_cli(zygotes, repo, state, key, f"{proxy.host}/{fresh_path}", tmp_path)
    assert run.returncode == 1
    failed = blocked(result, "ArtifactPublishFailed")
    assert set(failed) == {f"{name}-v{version}" for name, version in EXAMPLE_PACKS.items()}, result["changes"]
    assert all("RegistryUnavailable" in m for m in failed.values()), failed
    assert_bounded(proxy)
    assert max(proxy.attempts().values()) == MAX_ATTEMPTS  # it did retry
    assert harness.store_objects(state, harness.CLUSTER_PACK) == []

    proxy.mode = "pass"
    run, result = reconcile_cli(zygotes, repo, state, key, f"{proxy.host}/{fresh_path}", tmp_path)
    assert run.returncode == 0 and result["summary"]["ready"], run.describe()
    assert assert_only_verified_packs_delivered(state, plain_registry.host, fresh_path) == len(EXAMPLE_PACKS)
    harness.CHAOS.append((f"registry {mode}", 2, 0, 0))


def test_a_few_503s_are_absorbed_by_the_retries(zygotes: harness.ZygotePool, proxy: harness.FaultProxy,
                                                plain_registry: registry_fixture.RunningRegistry, setup, fresh_path: str,
                                                tmp_path: pathlib.Path) -> None:
    repo, key = setup
    proxy.mode, proxy.flaky_count = "flaky", 2
    run, result = reconcile_cli(zygotes, repo, tmp_path / "state", key, f"{proxy.host}/{fresh_path}", tmp_path)
    assert run.returncode == 0 and result["summary"]["ready"], run.describe()
    assert [status for _, _, status in proxy.requests[:2]] == [503, 503]
    assert_bounded(proxy)
    assert assert_only_verified_packs_delivered(tmp_path / "state", plain_registry.host, fresh_path) == len(EXAMPLE_PACKS)


def _in_process_pass(repo: pathlib.Path, state: pathlib.Path, key: pathlib.Path, url: str,
                     timeout: float) -> reconcile.PassState:
    """The pass as the CLI builds it, with the registry adapter's timeouts made short."""
    local = wiring.open_local(state)
    try:
        settings = wiring_settings.Settings.from_environ(
            signing_key=str(key), registry=wiring_settings.RegistryFlags(url=url, insecure=True))
        wired = wiring.build_env(settings, local, repo=str(repo), dry_run=False)
        wired.env.registry = registry_adapter.OciRegistry(url, insecure=True, connect_timeout=timeout,
                                                          read_timeout=timeout)
        return reconcile.run(wired.env)
    finally:
        local.close()


def test_a_registry_slower_than_the_timeout_is_given_up_on_after_bounded_tries(
        proxy: harness.FaultProxy, plain_registry: registry_fixture.RunningRegistry, setup, fresh_path: str,
        tmp_path: pathlib.Path) -> None:
    repo, key = setup
    state = tmp_path / "state"
    proxy.mode, proxy.delay = "slow", 1.5
    result = _in_process_pass(repo, state, key, f"{proxy.host}/{fresh_path}", timeout=0.4)
    assert result.summary is not None and not result.summary.ready
    assert proxy.arrived == MAX_ATTEMPTS, proxy.requests  # three timed-out tries, then the cooldown fails the other packs at once
    assert result.plan is not None
    reasons = {c.name: c.condition.message for c in result.plan.changes
               if c.action == "blocked" and c.kind == "ClusterPack" and c.condition is not None}
    assert len(reasons) == len(EXAMPLE_PACKS) and all("RegistryUnavailable" in m for m in reasons.values()), reasons
    assert harness.store_objects(state, harness.CLUSTER_PACK) == []

    proxy.delay = 0.05  # slow, but within the timeout: everything is delivered
    result = _in_process_pass(repo, state, key, f"{proxy.host}/{fresh_path}", timeout=0.4)
    assert result.summary is not None and result.summary.ready, result.summary
    assert assert_only_verified_packs_delivered(state, plain_registry.host, fresh_path) == len(EXAMPLE_PACKS)
    harness.CHAOS.append(("registry slow", 2, 0, 0))


EXTRA_CLUSTER = "name: extra\nlabels: {env: prod, region: eu, tier: edge}\n"


def test_a_corrupted_blob_blocks_delivery_to_a_new_cluster(zygotes: harness.ZygotePool, proxy: harness.FaultProxy,
                                                           plain_registry: registry_fixture.RunningRegistry, setup,
                                                           fresh_path: str, tmp_path: pathlib.Path) -> None:
    """Existing ClusterPacks about to be delivered to one more cluster are pulled and checked first:
    a registry that serves other bytes for a blob blocks that delivery."""
    repo, key = setup
    state = tmp_path / "state"
    url = f"{proxy.host}/{fresh_path}"
    run, _ = reconcile_cli(zygotes, repo, state, key, url, tmp_path)
    assert run.returncode == 0, run.describe()
    before = {o["metadata"]["name"]: o["spec"] for o in harness.store_objects(state, harness.PACK_INSTANCE)}

    (repo / "clusters" / "extra.yaml").write_text(EXTRA_CLUSTER)
    proxy.mode = "corrupt-blob"
    run, result = reconcile_cli(zygotes, repo, state, key, url, tmp_path)
    assert run.returncode == 1, run.describe()
    mismatched = [c for c in result["changes"] if c["action"] == "blocked" and c["reason"] == "ArtifactMismatch"]
    assert {c["name"] for c in mismatched} == {
        "platform-base-extra", "observability-extra", "cert-manager-lite-extra"}, result["changes"]
    assert all("served with digest" in c["condition"]["message"] for c in mismatched), mismatched
    after = {o["metadata"]["name"]: o["spec"] for o in harness.store_objects(state, harness.PACK_INSTANCE)}
    assert after == before  # nothing delivered to the new cluster, nothing else touched
    assert_only_verified_packs_delivered(state, plain_registry.host, fresh_path)

    proxy.mode = "pass"
    run, result = reconcile_cli(zygotes, repo, state, key, url, tmp_path)
    assert run.returncode == 0, run.describe()
    names = {o["metadata"]["name"] for o in harness.store_objects(state, harness.PACK_INSTANCE)}
    assert {"platform-base-extra", "observability-extra", "cert-manager-lite-extra"} <= names
    harness.CHAOS.append(("registry serves a corrupted blob", 2, 0, 0))


@pytest.mark.parametrize(("mode", "reason"), [("digest-lie", "RegistryDigestMismatch"), ("lying-head", "RegistryRejected")])
def test_a_registry_that_lies_about_what_it_stored_delivers_nothing(
        mode: str, reason: str, zygotes: harness.ZygotePool, proxy: harness.FaultProxy,
        plain_registry: registry_fixture.RunningRegistry, setup, fresh_path: str, tmp_path: pathlib.Path) -> None:
    """A manifest PUT answered with another digest, or blob HEADs that claim blobs the registry
    does not have (so the manifest PUT is refused): the pack is blocked, no ClusterPack is made."""
    repo, key = setup
    state = tmp_path / "state"
    url = f"{proxy.host}/{fresh_path}"
    proxy.mode = mode
    run, result = reconcile_cli(zygotes, repo, state, key, url, tmp_path)
    assert run.returncode == 1, run.describe()
    failed = blocked(result, "ArtifactPublishFailed")
    assert len(failed) == len(EXAMPLE_PACKS) and all(reason in m for m in failed.values()), failed
    assert harness.store_objects(state, harness.CLUSTER_PACK) == []

    proxy.mode = "pass"
    run, result = reconcile_cli(zygotes, repo, state, key, url, tmp_path)
    assert run.returncode == 0, run.describe()
    assert assert_only_verified_packs_delivered(state, plain_registry.host, fresh_path) == len(EXAMPLE_PACKS)
    harness.CHAOS.append((f"registry {mode}", 2, 0, 0))
