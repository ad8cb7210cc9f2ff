"""Kubernetes API faults: real reconcile passes of examples-repo with the Kubernetes adapter against
the real management cluster (``tests.realkube``), through the proxy's seeded fault rules.

Each trial plays the same story (install everything, bump network-policies twice) in a namespace of
its own under one kind of fault: 409 storms on writes, 500s on any request, watch 410 Gone (etcd
compacted for real before each step; watches sent from a resourceVersion long gone so the real API
server answers 410 Expired, and 410 ERROR events injected by the proxy), dropped watch connections
(clean and abrupt). Each step is run pass after
pass until a pass plans nothing (at most ``MAX_PASSES``; a pass may fail with a transient error);
then the faults stop and one more pass must have nothing to do. The objects must equal those of the
same story without faults (timestamps, resourceVersions, uids aside), with no duplicate (one
ClusterPack per pack version, one PackInstance per pack and cluster), no lost update (the
PackInstances say the last bumped version) and no duplicated install record.

The scenario function returns a ``Tally`` (trials, failures, lost) that ``bench/chaos`` reuses.
The tallies run in a child process with the management cluster's kubeconfig passed in.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from gitopsd import errors, logs, ports
from gitopsd.adapters import fstree, kube
from gitopsd.core import signing
from tests.contract import harness as kharness
from tests.contract.harness import INSTANCES, PACKS
from tests.realkube import clusters as realkube
from tests.realkube import faults as kfaults
from tests.realkube import proxy as kproxy
from tests.realkube.env import KubeEnv
from tests.reliability import harness
from tests.reliability.harness import Tally

TRIALS = 5  # per fault kind, about 2 s each on 2 cores (bench/chaos --kube-trials runs more)
BUDGET = 120  # seconds for the reference run and every trial in the child process (measured: 40 s)
MAX_PASSES = 8  # per step, before the faults stop
BUMPS = ("1.1.0", "1.2.0", "1.3.0")  # network-policies: as installed, then two bumps
COMMIT_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z, the repo's mtime at the first step
VOLATILE = {"resourceVersion", "uid", "generation", "creationTimestamp", "managedFields", "lastTransitionTime", "time",
            "installedAt", "observedAt", "lastUpdated", "observedGeneration", "lastEventTime", "firstTimestamp",
            "lastTimestamp"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUDGET + 10)]


def strip(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in sorted(obj.items()) if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def pack_view(obj: dict[str, Any]) -> object:
    """A ClusterPack without what differs between equivalent runs. The Ready message is left out: a
    status write lost after the create is completed by a later pass with a generic message
    (test_a_completed_cluster_pack_status_keeps_its_provenance_message, a known bug); how often is
    counted in the notes."""
    status = dict(obj.get("status") or {})
    status["conditions"] = [{k: v for k, v in c.items() if k != "message"} for c in status.get("conditions", [])]
    return strip({"labels": obj["metadata"].get("labels"), "spec": obj["spec"], "status": status})


GENERIC = "ClusterPack {} created"


class TrialEnv(KubeEnv):
    """A ``KubeEnv`` in a fresh namespace of the management cluster, with its own proxy; ``upstream``
    is the cluster's own kubeconfig (etcd compaction finds its ports next to it)."""

    def __init__(self, upstream: pathlib.Path, root: pathlib.Path, seed: int) -> None:
        self.upstream = upstream
        self._stack = contextlib.ExitStack()
        with self._stack:
            proxy = self._stack.enter_context(kproxy.KubeProxy(upstream, seed=seed))
            direct = self._stack.enter_context(realkube.api(upstream))
            namespace = realkube.fresh_namespace(direct, "faults")
            self._stack.callback(realkube.delete_namespace, direct, namespace)
            root.mkdir(parents=True, exist_ok=True)
            super().__init__(proxy, direct, namespace, proxy.write_kubeconfig(root / "kubeconfig", namespace))
            self._stack = self._stack.pop_all()  # started: __exit__ closes it

    def __enter__(self) -> TrialEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()


def view(env: TrialEnv, steps: list[ports.Snapshot], verifier: ports.Verifier) -> dict[str, dict[str, object]]:
    """ClusterPacks and PackInstances, without what differs between equivalent runs. What differs
    because each run has a namespace of its own is named, not dropped: wherever they appear, the
    namespace reads ``NAMESPACE`` and the repo's revision at step N ``REVISION-N`` (a plain folder's
    revision hashes gitopsd.yaml, which names the namespace); a pack signature reads ``VERIFIED``
    when it verifies over that run's own spec."""
    packs = {}
    for obj in env.list_objects(PACKS):
        status = obj.get("status") or {}
        if "packSignature" in status:
            good = verifier.verify(signing.payload_of_spec_json(json.dumps(obj["spec"])), status["packSignature"])
            obj["status"] = {**status, "packSignature": "VERIFIED" if good else "DOES NOT VERIFY"}
        packs[obj["metadata"]["name"]] = pack_view(obj)
    found = {
        "packs": packs,
        "instances": {o["metadata"]["name"]: strip({"labels": o["metadata"].get("labels"), "spec": o["spec"],
                                                    "status": o.get("status")})
                      for o in env.list_objects(INSTANCES)},
    }
    text = json.dumps(found).replace(env.namespace, "NAMESPACE")
    for number, snapshot in enumerate(steps, 1):
        text = text.replace(snapshot.revision, f"REVISION-{number}")
    return json.loads(text)  # type: ignore[no-any-return]


def stale_watches(env: TrialEnv, rng: random.Random) -> None:
    """Compact etcd for real, then watches from a resourceVersion long gone (the real server answers
    410 Expired) and injected 410 ERROR events."""
    realkube.compact(env.upstream)
    env.faults.add(kfaults.StaleWatch(), verb="watch", probability=rng.uniform(0.3, 1.0), times=rng.randint(1, 3))
    env.faults.add(kfaults.WatchGone(), verb="watch", probability=rng.uniform(0.3, 1.0), times=rng.randint(1, 3))


# fault kind -> adds its rules to the proxy for one step (rng: the trial's seeded choices)
FAULTS: dict[str, Callable[[TrialEnv, random.Random], None]] = {
    "409 storm": lambda env, rng: env.faults.add(kfaults.Conflict(), verb="write", probability=rng.uniform(0.3, 0.7),
                                                 times=rng.randint(5, 20)),
    "500s": lambda env, rng: env.faults.add(kfaults.InternalError(), verb="*", probability=rng.uniform(0.1, 0.4),
                                            times=rng.randint(2, 6)),
    "watch 410 (compacted)": stale_watches,
    "dropped watch": lambda env, rng: env.faults.add(
        kfaults.DropWatch(after_events=rng.randint(0, 3), abrupt=rng.random() < 0.5), verb="watch",
        probability=rng.uniform(0.3, 1.0), times=rng.randint(1, 6)),
}


@dataclasses.dataclass
class Story:
    """What a trial did: the view after it, passes that failed (by reason), passes per step."""

    final: dict[str, dict[str, object]]
    failed: collections.Counter[str]
    passes: list[int]
    problems: list[str]
    injected: collections.Counter[str]  # faults by effect
    generic: int  # ClusterPacks whose Ready message is the generic one of a completed status
    expired: int = 0  # watches the real server answered with 410 Expired (StaleWatch)


def set_version(repo: pathlib.Path, version: str) -> None:
    """Bump network-policies; every file's mtime is then a fixed one for the version, so the commit
    time of the plain folder (its newest mtime) is the same in every run."""
    path = repo / "packs" / "network-policies" / "packbuild.yaml"
    lines = [f"version: {version}" if line.startswith("version:") else line for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    when = COMMIT_TIME + 60 * BUMPS.index(version)
    for file in repo.rglob("*"):
        os.utime(file, (when, when), follow_symlinks=False)


def use_namespace(repo: pathlib.Path, namespace: str) -> None:
    settings = repo / "gitopsd.yaml"
    text = settings.read_text()
    assert "namespace: seam-system" in text, text
    settings.write_text(text.replace("namespace: seam-system", f"namespace: {namespace}", 1))


def play(root: pathlib.Path, state: pathlib.Path, kubeconfig: pathlib.Path, *, fault: str | None, seed: int) -> Story:
    """Install examples-repo in a fresh namespace of the cluster of ``kubeconfig``, then bump
    network-policies twice, each step under ``fault``."""
    rng = random.Random(seed)
    repo = root / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(harness.EXAMPLES, repo)
    failed: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    per_step: list[int] = []
    steps: list[ports.Snapshot] = []
    with TrialEnv(kubeconfig, root, seed) as env:
        use_namespace(repo, env.namespace)
        with kube.connect(kubeconfig=str(env.kubeconfig)) as api, kube.KubeCluster(api, backoff=(0.02, 0.2)) as cluster:
            passes = kharness.Passes(repo, state, cluster)
            try:
                for version in BUMPS:
                    set_version(repo, version)
                    steps.append(fstree.FsTree(repo).snapshot)
                    if fault is not None:
                        FAULTS[fault](env, rng)
                    count = 0
                    converged = False
                    for _ in range(MAX_PASSES):
                        count += 1
                        try:
                            result = passes.run()
                        except errors.TransientError as err:
                            failed[err.reason] += 1
                            continue
                        if result.plan is not None and not result.plan.has_changes:
                            converged = True
                            break
                    per_step.append(count)
                    if not converged:
                        problems.append(f"network-policies {version}: not converged after {MAX_PASSES} passes")
                    env.faults.clear()
                final = passes.run()  # the faults are gone: nothing may be left to do
                if final.plan is None or final.plan.has_changes or final.writes:
                    problems.append(f"after the faults stopped a pass still had work: {final.writes} writes")
            except errors.GitopsdError as err:
                problems.append(f"{type(err).__name__} {err.reason}: {err}")
            finally:
                passes.close()
            final_view = view(env, steps, passes.verifier)
        injected = collections.Counter(r.fault for r in env.requests() if r.fault)
        broken = [f"{r.verb} {r.resource} {r.code}" for r in env.requests() if r.code >= 500 and not r.fault]
        if broken:  # the server or the proxy failed by itself: the trial proves little
            problems.append(f"{len(broken)} requests failed without an injected fault, e.g. {broken[:2]}")
        records = env.requests()
        expired = 0
        for index, record in enumerate(records):
            if record.fault in ("StaleWatch", "WatchGone"):  # 410 from the real server, or injected
                expired += record.fault == "StaleWatch"
                if not any(r.verb == "list" and r.resource == record.resource for r in records[index + 1:]):
                    problems.append(f"no relist of {record.resource} after a watch answered 410 ({record.fault})")
        generic = sum(1 for o in env.list_objects(PACKS)
                      for c in (o.get("status") or {}).get("conditions", [])
                      if c.get("message") == GENERIC.format(o["metadata"]["name"]))
        return Story(final_view, failed, per_step, problems, injected, generic, expired)


def differences(mine: object, theirs: object, path: str = "") -> list[str]:
    """Where two stripped objects differ: ``path: mine != theirs`` lines."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        return [d for k in sorted(set(mine) | set(theirs))
                for d in differences(mine.get(k), theirs.get(k), f"{path}.{k}")]
    if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
        return [d for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if mine == theirs else [f"{path}: {str(mine)[:200]} != {str(theirs)[:200]}"]


def check(story: Story, reference: dict[str, dict[str, object]]) -> tuple[list[str], int]:
    """Problems of a faulty run against the reference, and how many reference objects it lost."""
    problems = list(story.problems)
    lost = 0
    for section in ("packs", "instances"):
        mine, theirs = story.final[section], reference[section]
        for name, value in theirs.items():
            if mine.get(name) != value:
                lost += 1
                problems.append(f"{section} {name}: " + ("missing" if name not in mine else
                                "differs at " + "; ".join(differences(mine[name], value)[:3])))
        for name in set(mine) - set(theirs):
            problems.append(f"{section} {name}: not in a run without faults")
    packs = collections.Counter((v["spec"]["basePackName"], v["spec"]["version"])  # type: ignore[index]
                                for v in story.final["packs"].values())
    instances = collections.Counter((v["spec"]["basePackName"], v["spec"]["cluster"])  # type: ignore[index]
                                    for v in story.final["instances"].values())
    problems += [f"{n} ClusterPacks for {key}" for key, n in packs.items() if n > 1]
    problems += [f"{n} PackInstances for {key}" for key, n in instances.items() if n > 1]
    for name, obj in story.final["instances"].items():
        status = obj.get("status") or {}  # type: ignore[union-attr]
        history = [(h.get("packVersion"), h.get("state")) for h in status.get("history", [])]  # type: ignore[union-attr]
        if len(history) != len(set(history)):
            problems.append(f"{name}: duplicated install records {history}")
        if obj["spec"]["basePackName"] == "network-policies" and status.get("version") != BUMPS[-1]:  # type: ignore[index, union-attr]
            lost += 1
            problems.append(f"{name}: says version {status.get('version')}, the last bump was {BUMPS[-1]}")  # type: ignore[union-attr]
    return problems, lost


def reference_run(root: pathlib.Path, kubeconfig: pathlib.Path) -> tuple[pathlib.Path, dict[str, dict[str, object]]]:
    """The story without faults; its state dir (keys, compile cache, OCI layout) seeds every trial so
    that signatures match and nothing is compiled again."""
    state = root / "reference-state"
    story = play(root / "reference", state, kubeconfig, fault=None, seed=0)
    assert not story.problems, story.problems
    assert len(story.final["packs"]) == 7 and len(story.final["instances"]) == 15, sorted(story.final["packs"])
    return state, story.final


def kube_faults(root: pathlib.Path, kubeconfig: pathlib.Path, fault: str, trials: int, seed: int,
                reference: tuple[pathlib.Path, dict[str, dict[str, object]]] | None = None) -> Tally:
    """``trials`` seeded trials of ``fault`` on the cluster of ``kubeconfig`` (its own, not a proxy's)."""
    tally = Tally(f"kube: {fault}")
    base_state, want = reference or reference_run(root, kubeconfig)
    failed: collections.Counter[str] = collections.Counter()
    injected: collections.Counter[str] = collections.Counter()
    generic = expired = 0
    worst = 0
    for index in range(trials):
        trial = root / f"{fault.split(maxsplit=1)[0]}-{index:03d}".replace("/", "_")
        state = trial / "state"
        shutil.copytree(base_state, state)
        before = set(threading.enumerate())
        story = play(trial, state, kubeconfig, fault=fault, seed=seed * 1000 + index)
        left = kharness.threads_left(before)
        problems, lost = check(story, want)
        if left:
            problems.append(f"threads left running: {left}")
        tally.trials += 1
        tally.lost += lost
        failed.update(story.failed)
        injected.update(story.injected)
        generic += story.generic
        expired += story.expired
        worst = max([worst, *story.passes])
        if problems:
            tally.failures.append(f"trial {index} (seed {seed * 1000 + index}): " + "; ".join(problems[:4]))
        shutil.rmtree(trial, ignore_errors=True)
    tally.notes = (f"faults injected {dict(sorted(injected.items()))}, failed passes by reason {dict(failed)}, "
                   + (f"{expired} watches answered 410 Expired by the real server, " if expired else "")
                   + f"at most {worst} passes per step; {generic} ClusterPack Ready messages generic after a lost status "
                   "write (known bug)")
    return tally


def _in_child(root: str, kubeconfig: str, trials: int) -> None:
    """Entry point of the child process: every fault kind, one tally per line as JSON on stdout, and
    the seconds each took on stderr."""
    logs.configure("error")
    started = time.monotonic()
    reference = reference_run(pathlib.Path(root), pathlib.Path(kubeconfig))
    sys.stderr.write(f"reference run: {time.monotonic() - started:.1f} s\n")
    for index, fault in enumerate(FAULTS):
        started = time.monotonic()
        tally = kube_faults(pathlib.Path(root), pathlib.Path(kubeconfig), fault, trials, index + 1, reference)
        sys.stderr.write(f"{fault}: {trials} trials in {time.monotonic() - started:.1f} s\n")
        print(json.dumps(dataclasses.asdict(tally)), flush=True)


@pytest.fixture(scope="module")
def tallies(tmp_path_factory: pytest.TempPathFactory, mgmt_kubeconfig: pathlib.Path) -> dict[str, Tally]:
    """``kube_faults`` of every fault kind in one fresh interpreter, apart from the many subprocesses
    and descriptors of the other reliability tests in this pytest process."""
    root = tmp_path_factory.mktemp("kube-faults")
    code = (f"from tests.reliability.test_kube_faults import _in_child; "
            f"_in_child({str(root)!r}, {str(mgmt_kubeconfig)!r}, {TRIALS})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=harness.ROOT, capture_output=True, text=True,
                          timeout=BUDGET, check=False)
    sys.stderr.write(proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = [Tally(**json.loads(line)) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {t.scenario: t for t in out}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_kube_api_faults_converge_to_the_objects_of_a_run_without_faults(fault: str, tallies: dict[str, Tally]) -> None:
    tally = tallies[f"kube: {fault}"]
    harness.CHAOS.append(tally.row())
    print(f"\n{tally.scenario}: {tally.trials} trials, {len(tally.failures)} failed, {tally.lost} lost. {tally.notes}")
    assert not tally.failures, "\n".join(tally.failures)
    assert tally.lost == 0


def test_a_completed_cluster_pack_status_keeps_its_provenance_message(tmp_path: pathlib.Path, kube_env: KubeEnv) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(harness.EXAMPLES, repo)
    use_namespace(repo, kube_env.namespace)
    with kube.connect(kubeconfig=str(kube_env.kubeconfig)) as api, kube.KubeCluster(api, backoff=(0.02, 0.2)) as cluster:
        passes = kharness.Passes(repo, tmp_path / "state", cluster, pack_filter=lambda name: name == "platform-base")
        try:
            passes.run()
            # a ClusterPack without its status, as an older release left one whose /status write was lost
            (created,) = kube_env.list_objects(PACKS)
            kube.client.CustomObjectsApi(kube_env.direct).patch_namespaced_custom_object(
                kube.GROUP, kube.VERSION, kube_env.namespace, PACKS, created["metadata"]["name"], {"status": None})
            gone = kube_env.list_objects(INSTANCES)[0]["metadata"]["name"]
            kube_env.delete_object(INSTANCES, gone)  # a pass with writes
            # the cache must have seen both changes, or the pass plans from before them and writes nothing
            kharness.wait_until(lambda: not any(o.get("status") for o in cluster.informer(kube.CLUSTER_PACKS, kube_env.namespace).snapshot())
                                and cluster.informer(kube.PACK_INSTANCES, kube_env.namespace).get(gone) is None)
            passes.run()
        finally:
            passes.close()
    (pack,) = kube_env.list_objects(PACKS)
    ready = next(c for c in pack["status"]["conditions"] if c["type"] == "Ready")
    assert ready["message"].startswith("created from packs/platform-base/"), ready
