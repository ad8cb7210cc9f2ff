"""The plan kept up to date from the change feed equals the plan worked out from scratch, step by step.

Seeded random sequences of commits (version bumps and rollbacks, packs added and removed, target
changes, PackBuilds of one basePackName and packs owning one object colliding, a change without a
version bump, broken PackBuilds), edits behind gitopsd's back (a PackInstance or ClusterPack
deleted or edited in the SQLite store or the in-memory cluster), restarts (a new store object and
an empty memory) and dry-runs. At every pass the plan step's plan is compared with
``replan.full`` of the same inputs.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import random
import sqlite3

import pytest

from gitopsd import memo, ports, reconcile
from gitopsd.adapters import fakes, keys, localstore, render, schemafiles
from gitopsd.core import plan, replan
from gitopsd.model import change

CLUSTERS = ("a", "b", "c")
NAMESPACE = "seam-system"


@dataclasses.dataclass
class Pack:
    base: str
    version: tuple[int, int, int] = (1, 0, 0)
    targets: tuple[str, ...] = CLUSTERS
    obj: str = ""  # the ConfigMap it owns: another pack's name makes them collide
    priority: int = 0
    salt: int = 0  # changes the content without a version bump
    broken: bool = False


def files_of(packs: dict[str, Pack]) -> dict[str, bytes]:
    out = {"gitopsd.yaml": b"namespace: seam-system\npolicies: {keepVersions: 2}\n"}
    for cluster in CLUSTERS:
        out[f"clusters/{cluster}.yaml"] = f"name: {cluster}\n".encode()
    for folder, p in packs.items():
        version = ".".join(map(str, p.version))
        if p.broken:
            out[f"packs/{folder}/packbuild.yaml"] = b"name: [broken\n"
            continue
        out[f"packs/{folder}/packbuild.yaml"] = (
            f"name: {p.base}\nversion: {version}\nbasePackName: {p.base}\ncategory: raw\nrawSource: {{path: m}}\n"
            f"targetClusters: [{', '.join(p.targets)}]\nnamespace: apps\npriority: {p.priority}\n").encode()
        out[f"packs/{folder}/m/cm.yaml"] = (
            f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {p.obj or folder}}}\n"
            f"data: {{v: '{version}', salt: '{p.salt}'}}\n").encode()
    return out


class World:
    """A config repo, a store (SQLite or in memory) and a process (an Env with its memory)."""

    def __init__(self, tmp: pathlib.Path, rng: random.Random, sqlite: bool) -> None:
        self.tmp, self.rng, self.sqlite = tmp, rng, sqlite
        self.packs: dict[str, Pack] = {f"p{i}": Pack(base=f"p{i}") for i in range(4)}
        self.db = tmp / "store.db"
        self.cluster: ports.Cluster = localstore.LocalStore(self.db) if sqlite else fakes.MemoryCluster()
        self.registry, self.cache = fakes.MemoryRegistry(), fakes.MemoryCache()
        self.signer = keys.load_private_key(keys.generate(tmp / "key").private_path)
        self.clock = fakes.FixedClock()
        self.memo = memo.Memo()
        self.passes = 0
        self.replanned: list[int] = []

    def env(self, *, dry_run: bool) -> reconcile.Env:
        signer = self.signer

        class Verifier:
            def verify(self, data: bytes, signature: str) -> bool:
                return signer.public_key().verify(data, signature)

        tree = fakes.MemoryTree(files_of(self.packs), revision=f"main@sha1:{self.passes:040x}", scratch=self.tmp / "scratch")
        author = self.rng.choice(["ann <ann@example.com>", "bob <bob@example.com>"])  # the install records' installedBy
        tree.snapshot = dataclasses.replace(tree.snapshot, author=author)
        return reconcile.Env(source=fakes.StaticSource(tree), cluster=self.cluster, registry=self.registry, cache=self.cache,
                             clock=self.clock, renderers=render.renderers(), schemas=schemafiles.schemas(), signer=signer,
                             verifier=Verifier(), dry_run=dry_run, memo=self.memo)

    def run(self, *, dry_run: bool = False) -> None:
        """One pass; at the plan step, the plan kept up to date must equal the plan from scratch."""
        self.passes += 1
        self.clock.value = f"2026-01-01T00:{self.passes // 60:02d}:{self.passes % 60:02d}Z"
        env, state = self.env(dry_run=dry_run), reconcile.PassState()
        for name, step in reconcile.STEPS:
            step(env, state)
            if name == "plan":
                assert state.plan is not None and state.observed is not None
                fresh = localstore.LocalStore(self.db) if self.sqlite else self.cluster  # the fake reads all each time
                scratch = dataclasses.replace(env, cluster=fresh, memo=memo.Memo(), full_plan=True)
                again = dataclasses.replace(state)
                reconcile.observe(scratch, again)  # read by a new process: no change feed
                reconcile.make_plan(scratch, again)
                if isinstance(fresh, localstore.LocalStore):
                    fresh.close()
                assert state.plan == again.plan, f"pass {self.passes}: the plan kept up to date differs from a full plan"
                self.replanned.append(state.replanned)

    # --- commits ---------------------------------------------------------------------------
    def commit(self) -> str:
        rng, packs = self.rng, self.packs
        folder = rng.choice(sorted(packs)) if packs else None
        op = rng.choice(["bump", "bump", "rollback", "add", "add_same_base", "remove", "retarget", "collide", "uncollide",
                         "priority", "no_bump", "break", "fix"])
        if folder is None or op == "add":
            name = f"p{len(packs) + rng.randrange(100)}"
            packs[name] = Pack(base=name)
            return f"add {name}"
        p = packs[folder]
        if op == "bump":
            p.version = (p.version[0], p.version[1] + 1, 0)
        elif op == "rollback" and p.version[1] > 0:
            p.version = (p.version[0], p.version[1] - 1, 0)
        elif op == "add_same_base":
            packs[f"{folder}x{rng.randrange(100)}"] = Pack(base=p.base, version=(2, rng.randrange(3), 0),
                                                           priority=rng.randrange(2))
        elif op == "remove":
            del packs[folder]
        elif op == "retarget":
            p.targets = tuple(c for c in CLUSTERS if rng.random() < 0.6)
        elif op == "collide":
            p.obj = rng.choice(sorted(packs))
        elif op == "uncollide":
            p.obj = ""
        elif op == "priority":
            p.priority = rng.randrange(3)
        elif op == "no_bump":
            p.salt += 1
        elif op == "break":
            p.broken = True
        elif op == "fix":
            p.broken = False
        return f"{op} {folder}"

    # --- edits behind gitopsd's back ------------------------------------------------------
    def edit(self) -> str:
        kind = self.rng.choice(["PackInstance", "PackInstance", "InfrastructureClusterPack"])
        action = self.rng.choice(["delete", "edit"])
        if self.sqlite:
            db = sqlite3.connect(self.db, isolation_level=None)
            try:
                rows = db.execute("SELECT name, body FROM objects WHERE kind=? ORDER BY name", (kind,)).fetchall()
                if not rows:
                    return "nothing to edit"
                name, body = self.rng.choice(rows)
                if action == "delete":
                    db.execute("DELETE FROM objects WHERE kind=? AND name=?", (kind, name))
                else:
                    db.execute("UPDATE objects SET body=? WHERE kind=? AND name=?", (_edited(body), kind, name))
            finally:
                db.close()
        else:
            assert isinstance(self.cluster, fakes.MemoryCluster)
            names = sorted(k for k in self.cluster.objects if k[0] == kind)
            if not names:
                return "nothing to edit"
            key = self.rng.choice(names)
            name = key[2]
            if action == "delete":
                del self.cluster.objects[key]
            else:
                self.cluster.objects[key] = json.loads(_edited(json.dumps(self.cluster.objects[key])))
        return f"{action} {kind} {name}"

    def restart(self) -> str:
        if self.sqlite:
            assert isinstance(self.cluster, localstore.LocalStore)
            self.cluster.close()
            self.cluster = localstore.LocalStore(self.db)
        self.memo = memo.Memo()
        return "restart"


def _edited(body: str) -> str:
    """The object as someone changed it by hand: another version and priority in its spec."""
    obj = json.loads(body)
    spec = obj.setdefault("spec", {})
    spec["priority"] = int(spec.get("priority") or 0) + 7
    ref = spec.get("clusterPackRef")
    if isinstance(ref, dict):
        ref["version"] = "0.0.1"
    else:
        spec["checksum"] = "sha256:" + "0" * 64
    return json.dumps(obj, sort_keys=True)


def run_sequence(tmp: pathlib.Path, seed: int, steps: int = 14) -> World:
    rng = random.Random(seed)
    world = World(tmp, rng, sqlite=seed % 2 == 0)
    world.run()
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.55:
            for _ in range(rng.randint(1, 3)):
                world.commit()
        elif roll < 0.8:
            world.edit()
        elif roll < 0.9:
            world.restart()
        world.run(dry_run=rng.random() < 0.15)
    return world


@pytest.mark.parametrize("seed", range(20), ids=lambda s: f"seed{s}-{'sqlite' if s % 2 == 0 else 'memory'}")
def test_the_plan_kept_up_to_date_equals_a_full_plan_after_every_step(tmp_path: pathlib.Path, seed: int) -> None:
    world = run_sequence(tmp_path, seed)
    # not a full plan every time: passes after the first planned fewer bases than there are
    assert min(world.replanned[1:]) < len(world.packs) or not world.packs


def test_a_pass_with_nothing_new_plans_no_base_and_reuses_the_plan(tmp_path: pathlib.Path) -> None:
    world = World(tmp_path, random.Random(0), sqlite=True)
    world.run()  # writes, then plans the bases it wrote again (settle)
    world.run()
    assert world.replanned[-1] == 0
    world.packs["p1"].version = (1, 1, 0)
    world.run()
    assert world.replanned[-1] == 1  # only the changed pack


def test_the_settle_step_plans_with_the_keys_the_plan_step_worked_out(tmp_path: pathlib.Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, random.Random(0), sqlite=True)
    world.run()
    calls: list[int] = []
    keys = replan._keys
    monkeypatch.setattr(replan, "_keys", lambda inputs: (calls.append(len(inputs.desired)), keys(inputs))[1])
    world.packs["p1"].version = (1, 1, 0)
    world.run()  # plan (works the keys out), apply, settle (takes them: the same desired packs)
    assert world.replanned[-1] == 1
    # the plan step's, and the full plan World.run compares it with; none in the settle step
    assert calls == [len(world.packs)] * 2


def test_an_edit_behind_gitopsds_back_is_seen_through_the_change_feed(tmp_path: pathlib.Path) -> None:
    world = World(tmp_path, random.Random(0), sqlite=True)
    world.run()
    world.run()
    db = sqlite3.connect(world.db, isolation_level=None)
    db.execute("DELETE FROM objects WHERE kind='PackInstance' AND name='p2-b'")
    db.close()
    world.run()
    assert world.replanned[-1] == 1
    assert isinstance(world.cluster, localstore.LocalStore)
    assert "p2-b" in world.cluster.observe(NAMESPACE).instances  # made again


def test_a_change_feed_that_misses_a_write_is_caught(tmp_path: pathlib.Path) -> None:
    """The comparison can fail: with the feed's delete trigger gone, a deletion behind gitopsd's
    back is not seen and the kept plan still says the instance is unchanged."""
    world = World(tmp_path, random.Random(0), sqlite=True)
    world.run()
    world.run()
    db = sqlite3.connect(world.db, isolation_level=None)
    db.execute("DROP TRIGGER feed_delete")
    db.execute("DELETE FROM objects WHERE kind='PackInstance' AND name='p2-b'")
    db.execute("INSERT INTO feed(kind, namespace, name) VALUES ('other', 'x', 'y')")  # the feed moves on, without it
    db.close()
    with pytest.raises(AssertionError, match="differs from a full plan"):
        world.run()


def test_full_and_kept_plans_order_fragments_by_base() -> None:
    fragment = plan.Fragment(changes=(change.Change(kind=change.ObjectKind.CLUSTER_PACK, name="b-v1", action=change.Action.UNCHANGED,
                                                    reason="same checksum", base_pack_name="b", version="1"),))
    other = dataclasses.replace(fragment, changes=(dataclasses.replace(fragment.changes[0], name="a-v1", base_pack_name="a"),))
    inputs = plan.Inputs(revision="r", desired=(), observed=replan_observed(), verdicts={},
                         policy=plan.Policy(namespace="n", now="t", installed_by="x", registry_hash="h"))
    made = plan.assemble(inputs, {"b": fragment, "a": other})
    assert [c.name for c in made.changes] == ["a-v1", "b-v1"]


def replan_observed() -> plan.instance.Observed:
    return plan.instance.Observed({}, {})


assert replan.Memory  # the module under test, imported for its name in failures
