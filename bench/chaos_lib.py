"""The scenarios of ``bench/chaos``: the reliability suite's trials (tests/reliability), by the hundred.

- ``kill -9 during gitopsd run``: ``harness.crash_trial`` N times (random delays over a pass, half
  from an empty state, half from the previous revision), as in tests/reliability/test_crash.py;
- ``hostile input corpus``: every case of tests/reliability/corpus on a plain folder and, where
  the case says so, on a Git work tree (``harness.corpus_problems``);
- ``registry <fault>``: a pass through ``harness.FaultProxy`` in front of a real docker-registry,
  then a pass without the fault: the first must block every pack (or absorb the fault), deliver
  nothing the registry does not serve exactly, and stay within three tries per request; the
  second must deliver everything;
- ``git: ...``: tests/reliability/test_git_faults.py through the CLI on real Git: ``--git-trials``
  rounds of a user push racing the status commit (user commits lost, merges, unverifiable status
  commits), and a tenth as many force-pushes, unreachable-remote passes, corrupted clone caches;
  plus ``--git-trials`` rounds of tests/adapters/test_statuswriter.py's race in process (one to
  three user commits pushed between building a status commit and pushing it; seeded by ``--seed``);
- ``kube: <fault>``: tests/reliability/test_kube_faults.py against a real control plane
  (``tools/kubecluster up bench-chaos``, stopped at the end) through the fault-injecting proxy,
  ``--kube-trials`` seeded trials per fault (409 storm, 500s, watch 410, dropped watch), each in a
  namespace of its own, compared with a run without.

A trial fails when any check fails; "lost items" are ClusterPacks or PackInstances an
uninterrupted run has and the trial's final state lacks (or has different). All must be 0.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gitopsd import logs  # noqa: E402
from gitopsd.adapters import keys  # noqa: E402
from gitopsd.adapters import registry as registry_adapter  # noqa: E402
from tests import registry_fixture  # noqa: E402
from tests.reliability import harness  # noqa: E402

CHAOS_CLUSTER = "bench-chaos"  # the control plane of the kube rows (tools/kubecluster), stopped at the end


@dataclasses.dataclass
class Row:
    scenario: str
    trials: int = 0
    failures: int = 0
    lost: int = 0
    seconds: float = 0.0
    notes: str = ""
    examples: list[str] = dataclasses.field(default_factory=list)

    def failed(self, message: str) -> None:
        self.failures += 1
        if len(self.examples) < 5:
            self.examples.append(message)


def crash(pool: harness.ZygotePool, work: pathlib.Path, trials: int, seed: int) -> Row:
    row = Row("kill -9 during gitopsd run (local)")
    started = time.monotonic()
    world = harness.make_crash_world(work / "world", pool)
    rng = random.Random(seed)
    window = world.pass_seconds * 1.3 + 0.05
    plans = [(i, "empty" if i % 2 else "base", rng.uniform(0.0, window)) for i in range(trials)]

    def one(plan: tuple[int, str, float]) -> harness.Trial:
        index, start, delay = plan
        trial_dir = work / f"trial-{index:04d}"
        with pool.get() as zygote:
            result = harness.crash_trial(world, zygote, trial_dir, start=start, delay=delay)
        shutil.rmtree(trial_dir, ignore_errors=True)
        return result

    with concurrent.futures.ThreadPoolExecutor(len(pool._all)) as executor:
        results = list(executor.map(one, plans))
    for t in results:
        row.trials += 1
        row.lost += t.lost
        if t.failures:
            row.failed(f"start={t.start} delay={t.delay:.3f}: {'; '.join(t.failures[:3])}")
    phases = collections.Counter(t.phase for t in results)
    untagged = sum(bool(t.untagged) for t in results)
    row.notes = (f"kills over {window:.2f}s; store {phases['before apply']} before / {phases['after apply']} after "
                 f"the apply, {phases['half-applied']} half-applied; {untagged} left OCI refs untagged (known bug)")
    row.seconds = time.monotonic() - started
    return row


def corpus(pool: harness.ZygotePool, work: pathlib.Path) -> tuple[Row, list[tuple[str, float]]]:
    row = Row("hostile input corpus")
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    cases = harness.load_cases()
    runs = [(c, "folder") for c in cases] + [(c, "git") for c in cases if c.git]
    memory: list[tuple[str, float]] = []

    def one(pair: tuple[harness.Case, str]) -> tuple[harness.Case, str, list[str], harness.Run]:
        case, source = pair
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"{case.id}-{source}-", dir=work))
        repo = harness.build_repo(case, tmp / "repo")
        if source == "git":
            harness.commit_all(repo)
        run = pool.run("reconcile", str(repo), "--state-dir", str(tmp / "state"), "-o", "json", cwd=tmp,
                       timeout=case.timeout)
        problems = harness.corpus_problems(case, run, tmp / "state")
        shutil.rmtree(tmp, ignore_errors=True)
        return case, source, problems, run

    known = 0
    with concurrent.futures.ThreadPoolExecutor(len(pool._all)) as executor:
        for case, source, problems, run in executor.map(one, runs):
            row.trials += 1
            if case.bomb and source == "folder":
                memory.append((case.id, run.max_rss_mib))
            if problems and case.xfail:
                known += 1
                continue
            if problems:
                row.failed(f"{case.id} ({source}): {problems[0]}")
    row.notes = f"{len(cases)} cases, {row.trials - len(cases)} also on Git; {known} known bug(s) (strict xfail)"
    row.seconds = time.monotonic() - started
    return row, memory


def _blocked_all(result: dict, expected: int) -> bool:
    blocked = [c for c in result.get("changes", []) if c["kind"] == "ClusterPack" and c["action"] == "blocked"]
    return len(blocked) == expected


def _delivered_ok(state: pathlib.Path, registry_host: str, path: str) -> list[str]:
    direct = registry_adapter.OciRegistry(f"{registry_host}/{path}", insecure=True)
    problems = []
    names = set()
    for obj in harness.store_objects(state, harness.CLUSTER_PACK):
        spec = obj["spec"]
        names.add(obj["metadata"]["name"])  # type: ignore[index]
        layers = {f: spec[f] for f in ("rbacDigest", "clusterScopedDigest", "workloadDigest") if spec.get(f)}  # type: ignore[index, union-attr]
        problems += direct.verify(spec["basePackName"], spec["registryRef"]["digest"], layers)  # type: ignore[index]
    for inst in harness.store_objects(state, harness.PACK_INSTANCE):
        if inst["spec"]["clusterPackRef"]["name"] not in names:  # type: ignore[index]
            problems.append(f"{inst['metadata']['name']} points at a ClusterPack that is not there")  # type: ignore[index]
    return problems


FAULTS = ("down", "500", "reset", "flaky", "corrupt-blob", "digest-lie", "lying-head")


def registry_fault(zygote: harness.Zygote, registry: registry_fixture.RunningRegistry, work: pathlib.Path, mode: str,
                   trials: int) -> Row:
    """``trials`` times: the fault on one pass, then a pass without it; see the module docstring."""
    row = Row(f"registry {mode}")
    started = time.monotonic()
    expected = harness.example_packs()
    reference: dict[str, object] | None = None
    for index in range(trials):
        tmp = work / f"{mode}-{index:03d}"
        repo = tmp / "repo"
        shutil.copytree(harness.EXAMPLES, repo)
        key = keys.generate(tmp / "key").private_path
        path = f"chaos{index}x{abs(hash((mode, time.time()))) % 10**8}"
        proxy = harness.FaultProxy(registry.host)
        state = tmp / "state"
        problems: list[str] = []
        try:
            if mode == "down":
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    target = f"127.0.0.1:{sock.getsockname()[1]}/{path}"
            else:
                target = f"{proxy.host}/{path}"
            flags = ["--state-dir", str(state), "--signing-key", str(key), "--registry", target, "--registry-insecure",
                     "-o", "json"]
            if mode == "corrupt-blob":  # deliver first, then one more cluster makes gitopsd pull and check
                first = zygote.run("reconcile", str(repo), *flags, cwd=tmp)
                if first.returncode != 0:
                    problems.append(f"setup pass failed: {first.stderr[-300:]}")
                (repo / "clusters" / "extra.yaml").write_text("name: extra\nlabels: {env: prod, region: eu}\n")
            proxy.mode = mode
            proxy.flaky_count = 2
            t0 = time.monotonic()
            faulty = zygote.run("reconcile", str(repo), *flags, cwd=tmp, timeout=120)
            seconds = time.monotonic() - t0
            if "Traceback" in faulty.stderr or faulty.returncode not in (0, 1):
                problems.append(f"faulty pass exited {faulty.returncode}: {faulty.stderr[-300:]}")
            if seconds > 30:
                problems.append(f"faulty pass took {seconds:.1f}s")
            worst, _ = proxy.longest_streak()
            if worst > 3:
                problems.append(f"a request was tried {worst} times in a row")
            result = json.loads(faulty.stdout) if faulty.stdout.strip() else {}
            if mode == "flaky":
                if faulty.returncode != 0:
                    problems.append("a few 503s were not absorbed by the retries")
            elif mode == "corrupt-blob":
                mismatched = [c for c in result.get("changes", []) if c.get("reason") == "ArtifactMismatch"]
                if len(mismatched) != 3:
                    problems.append(f"{len(mismatched)} deliveries blocked for ArtifactMismatch, expected 3")
                if any(o["spec"]["cluster"] == "extra" for o in harness.store_objects(state, harness.PACK_INSTANCE)):  # type: ignore[index]
                    problems.append("a PackInstance was delivered from a corrupted artifact")
            elif not _blocked_all(result, len(expected)) or harness.store_objects(state, harness.CLUSTER_PACK):
                problems.append("the faulty pass did not block every pack, or delivered a ClusterPack")
            problems += _delivered_ok(state, registry.host, path)
            if mode != "down":
                proxy.mode = "pass"
                healed = zygote.run("reconcile", str(repo), *flags, cwd=tmp, timeout=120)
                if healed.returncode != 0:
                    problems.append(f"the pass after the fault exited {healed.returncode}: {healed.stderr[-300:]}")
                problems += _delivered_ok(state, registry.host, path)
                final = {k: v for k, v in harness.final_state(state).items() if k != "refs"}
                for section in ("packs", "instances"):
                    have = set(final[section])  # type: ignore[arg-type]
                    if reference is None:
                        continue
                    missing = set(reference[section]) - have  # type: ignore[arg-type]
                    row.lost += len(missing)
                if reference is None and not problems:
                    reference = final
        except Exception as err:  # noqa: BLE001 - a bench keeps going and reports
            problems.append(f"{type(err).__name__}: {err}")
        finally:
            proxy.close()
            shutil.rmtree(tmp, ignore_errors=True)
        row.trials += 1
        if problems:
            row.failed(f"trial {index}: {problems[0]}")
    row.seconds = time.monotonic() - started
    return row


def table(rows: list[Row]) -> str:
    head = f"{'scenario':<40} {'trials':>7} {'failures':>9} {'lost items':>11} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.scenario:<40} {r.trials:>7} {r.failures:>9} {r.lost:>11} {r.seconds:>8.1f}")
    return "\n".join(lines)


def main(trials: int, registry_trials: int, workers: int, seed: int, only: set[str] | None, git_trials: int = 100,
         kube_trials: int = 5, first_runs: int = 100, first_run_rounds: int = 3, replan_trials: int = 100) -> int:
    logs.configure("warning")  # the registry checks run in this process; their debug lines are noise here
    work = pathlib.Path(tempfile.mkdtemp(prefix="gitopsd-chaos-"))
    pool = harness.ZygotePool(workers)
    rows: list[Row] = []
    memory: list[tuple[str, float]] = []
    registry = None
    try:
        if only is None or "kube" in only:
            rows += kube_faults(work / "kube", kube_trials, seed)
        if only is None or "crash" in only:
            rows.append(crash(pool, work / "crash", trials, seed))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        if only is None or "corpus" in only:
            row, memory = corpus(pool, work / "corpus")
            rows.append(row)
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        if only is None or "registry" in only:
            registry = registry_fixture.start_registry(work / "registry")
            with pool.get() as zygote:
                for mode in FAULTS:
                    rows.append(registry_fault(zygote, registry, work / "registry-trials", mode, registry_trials))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
        if only is None or "git" in only:
            rows += git_faults(pool, work / "git", git_trials, seed)
            print("\n".join(table(rows[-5:]).splitlines()[2:]), flush=True)
        if only is None or "replan" in only:
            rows.append(replan_sequences(work / "replan", replan_trials, seed))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        if only is None or "statedir" in only:
            for row in state_dir_faults(pool, work / "statedir", first_runs, first_run_rounds):
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    finally:
        if registry is not None:
            registry.stop()
        pool.close()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(rows))
    for r in rows:
        if r.notes:
            print(f"  {r.scenario}: {r.notes}")
        for example in r.examples:
            print(f"  FAILED {r.scenario}: {example[:400]}")
    if memory:
        print("peak RSS of the bomb cases: " + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in sorted(memory)))
    total_failures = sum(r.failures for r in rows)
    total_lost = sum(r.lost for r in rows)
    print(f"{sum(r.trials for r in rows)} trials, {total_failures} failures, {total_lost} lost items")
    return 0 if total_failures == 0 and total_lost == 0 else 1


# --- Git and Kubernetes API faults (tests/reliability/test_git_faults.py, test_kube_faults.py) ----------
def _row_of(tally: object, seconds: float) -> Row:
    row = Row(tally.scenario, tally.trials, 0, tally.lost, seconds, tally.notes)  # type: ignore[attr-defined]
    for failure in tally.failures:  # type: ignore[attr-defined]
        row.failed(failure)
    return row


def git_faults(pool: harness.ZygotePool, work: pathlib.Path, trials: int, seed: int) -> list[Row]:
    """``trials`` rounds of a user push racing the status commit; a tenth as many (at least 3)
    force-pushes, unreachable-remote passes and clone-cache corruptions, through the CLI."""
    from tests.reliability import test_git_faults as git_scenarios  # noqa: PLC0415

    others = max(3, trials // 10)
    plans = [
        ("race", lambda z, root: git_scenarios.push_races(z, root, trials, seed)),
        ("force", lambda z, root: git_scenarios.force_pushes(z, root, others)),
        ("unreachable", lambda z, root: git_scenarios.unreachable(z, root, others)),
        ("corrupt", lambda z, root: git_scenarios.corrupt_cache(z, root, max(others, len(git_scenarios.CORRUPTIONS)))),
        ("status push", lambda z, root: status_push_races(root, trials, seed)),
    ]

    def one(plan: tuple[str, object]) -> Row:
        name, scenario = plan
        started = time.monotonic()
        with pool.get() as zygote:
            try:
                tally = scenario(zygote, work / name)  # type: ignore[operator]
            except Exception as err:  # noqa: BLE001 - a bench keeps going and reports
                row = Row(f"git: {name}", 1, 0, 0, time.monotonic() - started)
                row.failed(f"{type(err).__name__}: {err}")
                return row
        shutil.rmtree(work / name, ignore_errors=True)
        return _row_of(tally, time.monotonic() - started)

    with concurrent.futures.ThreadPoolExecutor(len(pool._all)) as executor:
        return list(executor.map(one, plans))


def status_push_races(root: pathlib.Path, rounds: int, seed: int) -> harness.Tally:
    """tests/adapters/test_statuswriter.py's race in this process: a user pushes during every status push."""
    from tests.adapters import test_statuswriter as statuswriter_scenarios  # noqa: PLC0415

    tally = harness.Tally("git: user push during a status push")
    tally.trials = rounds
    tally.failures = statuswriter_scenarios.user_push_races(root, rounds, seed)
    tally.notes = f"in process, seed {seed}"
    return tally


def replan_sequences(root: pathlib.Path, trials: int, seed: int) -> Row:
    """tests/test_replan.py's sequences, longer and more of them: after every step of commits, edits
    behind gitopsd's back, restarts and dry-runs, the plan kept up to date equals a full plan."""
    from tests import test_replan  # noqa: PLC0415

    row = Row("replan: kept vs full plan")
    started = time.monotonic()
    for n in range(trials):
        row.trials += 1
        where = root / str(n)
        where.mkdir(parents=True)
        try:
            test_replan.run_sequence(where, seed * 100_000 + n, steps=40)
        except AssertionError as err:
            row.failed(f"seed {seed * 100_000 + n}: {err}")
        shutil.rmtree(where, ignore_errors=True)
    row.seconds = time.monotonic() - started
    row.notes = (f"in process, 40 steps each, seeds {seed * 100_000}..{seed * 100_000 + trials - 1} "
                 "(even: SQLite store, odd: memory fake)")
    return row


def kube_faults(work: pathlib.Path, trials: int, seed: int) -> list[Row]:
    """Every fault kind of test_kube_faults ``trials`` times against a real control plane started
    for the bench (``bench-chaos``, gitopsd's CRDs applied), through the proxy, in process."""
    import yaml  # noqa: PLC0415

    from tests.realkube import clusters  # noqa: PLC0415
    from tests.reliability import test_kube_faults as kube_scenarios  # noqa: PLC0415

    logs.configure("error")  # each injected fault logs a warning in this process; the table says what matters
    rows = []
    started = time.monotonic()
    try:
        kubeconfig, _ = clusters.up(CHAOS_CLUSTER)
    except Exception as err:  # noqa: BLE001 - a bench keeps going and reports
        row = Row("kube: control plane", 1, 0, 0, time.monotonic() - started)
        row.failed(f"{type(err).__name__}: {err}")
        return [row]
    try:
        with clusters.api(kubeconfig) as api_client:
            crds = [d for d in yaml.safe_load_all((ROOT / "deploy" / "10-crds.yaml").read_text()) if d]
            clusters.apply_documents(api_client, crds)
        reference = kube_scenarios.reference_run(work / "reference", kubeconfig)
        for index, fault in enumerate(kube_scenarios.FAULTS):
            started = time.monotonic()
            try:
                tally = kube_scenarios.kube_faults(work / f"fault-{index}", kubeconfig, fault, trials,
                                                   seed * 100 + index + 1, reference)
                rows.append(_row_of(tally, time.monotonic() - started))
            except Exception as err:  # noqa: BLE001
                row = Row(f"kube: {fault}", 1, 0, 0, time.monotonic() - started)
                row.failed(f"{type(err).__name__}: {err}")
                rows.append(row)
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        subprocess.run([sys.executable, str(clusters.TOOL), "down", CHAOS_CLUSTER], check=False, capture_output=True,
                       timeout=120)
    return rows


# --- the state dir: first runs at once, damaged state dirs (tests/reliability/test_state_dir.py) -------
def state_dir_faults(pool: harness.ZygotePool, work: pathlib.Path, runs: int, rounds: int) -> list[Row]:
    from tests.reliability import statedir  # noqa: PLC0415

    rows = []
    started = time.monotonic()
    rows.append(_row_of(statedir.first_runs(pool, work / "first-runs", rounds=rounds, runs=runs),
                        time.monotonic() - started))
    for scenario in getattr(statedir, "DAMAGE", ()):
        started = time.monotonic()
        rows.append(_row_of(statedir.damaged(pool, work / "damaged", scenario, trials=rounds), time.monotonic() - started))
    return rows
