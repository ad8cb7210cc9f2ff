"""The daemon's passes with delivery: one process, its watch cache on a real management cluster,
two real target clusters. After the first pass a deliver step walks only the bases that may have
something to deliver (``memo.Delivered``); at every pass its jobs equal those of a walk of every
base, and a pass with nothing new sends the targets nothing."""

from __future__ import annotations

import argparse
import contextlib
import pathlib
from collections.abc import Iterator

import pytest

from gitopsd import reconcile
from gitopsd.cli import flags
from gitopsd.core import delivery as delivery_core
from gitopsd.wiring import assemble
from gitopsd.wiring import settings as wiring_settings
from tests.delivery.conftest import Repo, Targets
from tests.realkube.env import KubeEnv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@contextlib.contextmanager
def daemon_env(kube_env: KubeEnv, targets: Targets, repo: Repo, state: pathlib.Path) -> Iterator[reconcile.Env]:
    """The Env ``gitopsd run`` keeps for its whole life, with these flags."""
    parser = argparse.ArgumentParser()
    flags.kube(parser)
    flags.delivery(parser)
    settings = wiring_settings.Settings.from_args(parser.parse_args(
        ["--kubeconfig", str(kube_env.kubeconfig), "--lease-namespace", kube_env.namespace,
         "--kubeconfig-dir", str(targets.kubeconfigs)]), environ={})
    with assemble.pass_env(settings, state, repo=str(repo.root), dry_run=False, daemon=True) as wired:
        yield wired.env


class Passes:
    def __init__(self, env: reconcile.Env) -> None:
        self.env = env
        self.count = 0
        self.jobs: list[delivery_core.Job] = []
        self.walked: int | None = None

    def run(self) -> reconcile.PassState:
        """One daemon pass (the first a resync); at the deliver step, the jobs of the bases it walks
        must be those of a walk of every base."""
        env, state = self.env, reconcile.PassState()
        env.resync = env.full_plan = self.count == 0
        self.count += 1
        for name, step in reconcile.STEPS:
            if name == "deliver":
                assert env.deliverer is not None
                reachable = frozenset(n for n, c in state.clusters.items() if env.deliverer.reachable(c))
                self.jobs, walked = reconcile.delivery_jobs(env, state, reachable, env.memo.delivered)
                every, _ = reconcile.delivery_jobs(env, state, reachable, None)
                assert self.jobs == every, f"pass {self.count}: the jobs differ from those of a walk of every base"
                self.walked = walked.walked if walked is not None else None
            step(env, state)
        assert state.summary is not None
        return state

    def instances(self) -> list[str]:
        return sorted(j.instance for j in self.jobs)


def test_daemon_passes_deliver_only_what_changed(kube_env: KubeEnv, targets: Targets, repo: Repo,
                                                 tmp_path: pathlib.Path) -> None:
    settings = repo.root / "gitopsd.yaml"
    settings.write_text(settings.read_text().replace("namespace: seam-system", f"namespace: {kube_env.namespace}"))
    ns = repo.ns
    repo.pack("one", "1.0.0", f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
              f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: one, namespace: {ns}}}\ndata: {{v: '1'}}\n")
    repo.pack("two", "1.0.0", f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: two, namespace: {ns}}}\n"
              "data: {v: '1'}\n")
    with daemon_env(kube_env, targets, repo, tmp_path / "state") as env:
        passes = Passes(env)
        first = passes.run()
        assert passes.instances() == ["one-a", "one-b", "two-a", "two-b"] and passes.walked is None
        assert {j.instance: r.result.value for j, r in first.deliveries} == dict.fromkeys(passes.instances(), "Delivered")

        passes.run()  # the status writes of the first pass moved both bases: walked again, nothing to do
        assert passes.jobs == [] and passes.walked == 2
        targets.reset()
        passes.run()
        assert passes.jobs == [] and passes.walked == 0
        assert targets.writes() == {"a": 0, "b": 0}

        repo.pack("two", "1.1.0", f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: two, namespace: {ns}}}\n"
                  "data: {v: '2'}\n")
        bumped = passes.run()
        assert passes.instances() == ["two-a", "two-b"] and passes.walked == 1
        assert {r.result.value for _, r in bumped.deliveries} == {"Delivered"}
        for cluster in ("a", "b"):
            found = targets.get(cluster, "configmap", "two", "-n", ns)
            assert found is not None and found["data"] == {"v": "2"}

        # someone else edits a delivery record: the watch cache sees the PackInstance move
        pi = kube_env.get_object("packinstances", "one-a")
        assert pi is not None
        pi["status"]["delivery"]["result"] = "Unreachable"
        kube_env.put_object("packinstances", "one-a", None, pi)
        for _ in range(20):  # the watch event arrives a moment later; until then the pass sees nothing new
            passes.run()
            if passes.jobs:
                break
        assert passes.instances() == ["one-a"]

        passes.run()
        passes.run()
        assert passes.jobs == [] and passes.walked == 0
