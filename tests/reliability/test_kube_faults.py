"""Kubernetes API faults: real reconcile passes of examples-repo with the Kubernetes adapter against
the API emulator (``gitopsd.testing.kubeapi``), with seeded fault rules.

Each trial plays the same story (install everything, bump network-policies twice) under one kind of
fault: 409 storms on writes, 500s on any request, watch 410 Gone (history compacted between passes
and injected on watches), dropped watch connections (clean and abrupt). Each step is run pass after
pass until a pass plans nothing (at most ``MAX_PASSES``; a pass may fail with a transient error);
then the faults stop and one more pass must have nothing to do. The objects must equal those of the
same story without faults (timestamps, resourceVersions, uids aside), with no duplicate (one
ClusterPack per pack version, one PackInstance per pack and cluster), no lost update (the
PackInstances say the last bumped version) and no duplicated install record.

The scenario function returns a ``Tally`` (trials, failures, lost) that ``bench/chaos`` reuses.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import pathlib
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from gitopsd import errors, logs
from gitopsd.adapters import kube
from gitopsd.testing import kubeapi
from tests.contract import harness as kharness
from tests.contract.harness import INSTANCES, NAMESPACE, PACKS
from tests.reliability import harness
from tests.reliability.harness import Tally

pytestmark = pytest.mark.timeout(180)

TRIALS = 2  # per fault kind (bench/chaos --kube-trials runs more)
MAX_PASSES = 8  # per step, before the faults stop
BUMPS = ("1.1.0", "1.2.0", "1.3.0")  # network-policies: as installed, then two bumps
VOLATILE = {"resourceVersion", "uid", "generation", "creationTimestamp", "managedFields", "lastTransitionTime", "time",
            "installedAt", "observedAt", "lastUpdated", "observedGeneration", "lastEventTime", "firstTimestamp",
            "lastTimestamp"}


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


def view(emu: kubeapi.Emulator) -> dict[str, dict[str, object]]:
    """ClusterPacks and PackInstances, without what differs between equivalent runs."""
    return {
        "packs": {o["metadata"]["name"]: pack_view(o) for o in emu.list_objects(PACKS, NAMESPACE)},
        "instances": {o["metadata"]["name"]: strip({"labels": o["metadata"].get("labels"), "spec": o["spec"],
                                                    "status": o.get("status")})
                      for o in emu.list_objects(INSTANCES, NAMESPACE)},
    }


# fault kind -> adds its rules to the emulator for one step (rng: the trial's seeded choices)
FAULTS: dict[str, Callable[[kubeapi.Emulator, random.Random], None]] = {
    "409 storm": lambda emu, rng: emu.faults.add(kubeapi.Conflict(), verb="write", probability=rng.uniform(0.3, 0.7),
                                                 times=rng.randint(5, 20)),
    "500s": lambda emu, rng: emu.faults.add(kubeapi.InternalError(), verb="*", probability=rng.uniform(0.1, 0.4),
                                            times=rng.randint(2, 6)),
    "watch 410 (compacted)": lambda emu, rng: (emu.compact(), emu.faults.add(
        kubeapi.WatchGone(), verb="watch", probability=rng.uniform(0.3, 1.0), times=rng.randint(1, 6))),
    "dropped watch": lambda emu, rng: emu.faults.add(
        kubeapi.DropWatch(after_events=rng.randint(0, 3), abrupt=rng.random() < 0.5), verb="watch",
        probability=rng.uniform(0.3, 1.0), times=rng.randint(1, 6)),
}


@dataclasses.dataclass
class Story:
    """What a trial did: the view after it, passes that failed (by reason), passes per step."""

    final: dict[str, dict[str, object]]
    failed: collections.Counter[str]
    passes: list[int]
    problems: list[str]
    injected: int
    generic: int  # ClusterPacks whose Ready message is the generic one of a completed status


def set_version(repo: pathlib.Path, version: str) -> None:
    path = repo / "packs" / "network-policies" / "packbuild.yaml"
    lines = [f"version: {version}" if line.startswith("version:") else line for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


def play(root: pathlib.Path, state: pathlib.Path, *, fault: str | None, seed: int) -> Story:
    """Install examples-repo, then bump network-policies twice, each step under ``fault``."""
    rng = random.Random(seed)
    repo = root / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(harness.EXAMPLES, repo)
    failed: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    per_step: list[int] = []
    with kubeapi.Emulator(bookmark_interval=0.2, namespace_deletion_delay=0.05, seed=seed) as emu:
        kharness.seed_emulator(emu)
        kubeconfig = emu.write_kubeconfig(root / "kubeconfig")
        with kube.connect(kubeconfig=str(kubeconfig)) as api, kube.KubeCluster(api, backoff=(0.02, 0.2)) as cluster:
            passes = kharness.Passes(repo, state, cluster)
            try:
                for version in BUMPS:
                    set_version(repo, version)
                    if fault is not None:
                        FAULTS[fault](emu, rng)
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
                    emu.faults.clear()
                final = passes.run()  # the faults are gone: nothing may be left to do
                if final.plan is None or final.plan.has_changes or final.writes:
                    problems.append(f"after the faults stopped a pass still had work: {final.writes} writes")
            except errors.GitopsdError as err:
                problems.append(f"{type(err).__name__} {err.reason}: {err}")
            finally:
                passes.close()
            injected = sum(1 for r in emu.requests() if r.fault)
            broken = [f"{r.verb} {r.resource}" for r in emu.requests() if r.code >= 500 and not r.fault]
            if broken:  # the emulator itself failed (e.g. select() on a descriptor >= 1024): the trial proves little
                problems.append(f"the emulator failed to serve {len(broken)} requests, e.g. {broken[:2]}")
            generic = sum(1 for o in emu.list_objects(PACKS, NAMESPACE)
                          for c in (o.get("status") or {}).get("conditions", [])
                          if c.get("message") == GENERIC.format(o["metadata"]["name"]))
            return Story(view(emu), failed, per_step, problems, injected, generic)


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


def reference_run(root: pathlib.Path) -> tuple[pathlib.Path, dict[str, dict[str, object]]]:
    """The story without faults; its state dir (keys, compile cache, OCI layout) seeds every trial so
    that signatures match and nothing is compiled again."""
    state = root / "reference-state"
    story = play(root / "reference", state, fault=None, seed=0)
    assert not story.problems, story.problems
    assert len(story.final["packs"]) == 7 and len(story.final["instances"]) == 15, sorted(story.final["packs"])
    return state, story.final


def kube_faults(root: pathlib.Path, fault: str, trials: int, seed: int,
                reference: tuple[pathlib.Path, dict[str, dict[str, object]]] | None = None) -> Tally:
    tally = Tally(f"kube: {fault}")
    base_state, want = reference or reference_run(root)
    failed: collections.Counter[str] = collections.Counter()
    injected = generic = 0
    worst = 0
    for index in range(trials):
        trial = root / f"{fault.split()[0]}-{index:03d}".replace("/", "_")
        state = trial / "state"
        shutil.copytree(base_state, state)
        before = set(threading.enumerate())
        story = play(trial, state, fault=fault, seed=seed * 1000 + index)
        left = kharness.threads_left(before)
        problems, lost = check(story, want)
        if left:
            problems.append(f"threads left running: {left}")
        tally.trials += 1
        tally.lost += lost
        failed.update(story.failed)
        injected += story.injected
        generic += story.generic
        worst = max([worst, *story.passes])
        if problems:
            tally.failures.append(f"trial {index} (seed {seed * 1000 + index}): " + "; ".join(problems[:4]))
        shutil.rmtree(trial, ignore_errors=True)
    tally.notes = (f"{injected} faults injected, failed passes by reason {dict(failed)}, "
                   f"at most {worst} passes per step; {generic} ClusterPack Ready messages generic after a lost status "
                   "write (known bug)")
    return tally


def _in_child(root: str, trials: int) -> None:
    """Entry point of the child process: every fault kind, one tally per line as JSON on stdout."""
    logs.configure("error")
    reference = reference_run(pathlib.Path(root))
    for index, fault in enumerate(FAULTS):
        tally = kube_faults(pathlib.Path(root), fault, trials, index + 1, reference)
        print(json.dumps(dataclasses.asdict(tally)), flush=True)


@pytest.fixture(scope="module")
def tallies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tally]:
    """``kube_faults`` of every fault kind in one fresh interpreter, apart from the many subprocesses
    and descriptors of the other reliability tests in this pytest process."""
    root = tmp_path_factory.mktemp("kube-faults")
    code = f"from tests.reliability.test_kube_faults import _in_child; _in_child({str(root)!r}, {TRIALS})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=harness.ROOT, capture_output=True, text=True,
                          timeout=170, check=False)
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


def test_a_completed_cluster_pack_status_keeps_its_provenance_message(tmp_path: pathlib.Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(harness.EXAMPLES, repo)
    with kubeapi.Emulator(bookmark_interval=0.2) as emu:
        kharness.seed_emulator(emu)
        kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig")
        with kube.connect(kubeconfig=str(kubeconfig)) as api, kube.KubeCluster(api, backoff=(0.02, 0.2)) as cluster:
            passes = kharness.Passes(repo, tmp_path / "state", cluster, pack_filter=lambda name: name == "platform-base")
            try:
                emu.faults.add(kubeapi.Fail(422, "Invalid", "injected"), verb="apply", resource=f"{PACKS}/status", times=1)
                with contextlib.suppress(errors.GitopsdError):
                    passes.run()
                kharness.wait_until(lambda: cluster.informer(kube.CLUSTER_PACKS, NAMESPACE).snapshot())
                passes.run()
            finally:
                passes.close()
        (pack,) = emu.list_objects(PACKS, NAMESPACE)
        ready = next(c for c in pack["status"]["conditions"] if c["type"] == "Ready")
        assert ready["message"].startswith("created from packs/platform-base/"), ready
