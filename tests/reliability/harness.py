"""Shared machinery of the reliability tests and of ``bench/chaos``: run gitopsd as a user does
(a subprocess), measure its peak memory, read the embedded store and the OCI layout back, build a
hostile-input case into a copy of examples-repo, and compare final states.

Nothing here decides a verdict; the tests and the bench do. Everything is stdlib + the package.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import queue
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import yaml

from tests import gitutil

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples-repo"
CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
PYTHON = sys.executable
CLUSTER_PACK = "InfrastructureClusterPack"
PACK_INSTANCE = "PackInstance"


def _temp_path(folder: pathlib.Path, prefix: str) -> pathlib.Path:
    """A fresh unique file name; the descriptor mkstemp opens is closed at once (no leak per run)."""
    fd, name = tempfile.mkstemp(prefix=prefix, dir=folder)
    os.close(fd)
    return pathlib.Path(name)


def example_packs() -> dict[str, str]:
    """basePackName -> version of every examples-repo pack, read from its PackBuild."""
    out = {}
    for path in sorted(EXAMPLES.glob("packs/*/packbuild.yaml")):
        doc = yaml.safe_load(path.read_text("utf-8"))
        out[doc["basePackName"]] = str(doc["version"]).lstrip("v")
    return out


# --- running gitopsd -------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    max_rss_kib: int  # peak resident set of the process and the children it waited for
    seconds: float
    timed_out: bool = False

    @property
    def max_rss_mib(self) -> float:
        return self.max_rss_kib / 1024

    def describe(self) -> str:
        return (f"gitopsd {' '.join(self.argv)} exited {self.returncode} in {self.seconds:.2f}s"
                f"{' (timed out)' if self.timed_out else ''}\n--- stdout\n{self.stdout[-4000:]}\n"
                f"--- stderr\n{self.stderr[-4000:]}")


def run_gitopsd(*argv: str, cwd: pathlib.Path, timeout: float = 120.0, env: dict[str, str] | None = None) -> Run:
    """``python -m gitopsd ARGV`` in a subprocess; its own peak RSS comes from ``wait4``."""
    cwd.mkdir(parents=True, exist_ok=True)
    out_path = _temp_path(cwd, ".out-")  # unique: runs may overlap in threads
    err_path = _temp_path(cwd, ".err-")
    started = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([PYTHON, "-m", "gitopsd", *argv], stdout=out, stderr=err, cwd=cwd,
                                env=env, start_new_session=True)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - started > timeout:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    run = Run(list(argv), proc.returncode, out_path.read_text("utf-8", "replace"), err_path.read_text("utf-8", "replace"),
              usage.ru_maxrss, time.monotonic() - started, timed_out)
    out_path.unlink()
    err_path.unlink()
    return run


class Zygote:
    """The parent side of ``tests/reliability/zygote.py``: gitopsd commands as forked children of one
    pre-imported interpreter (same argv, same exit codes, own process, own peak RSS; no second of
    imports each). One command at a time per zygote; ``ZygotePool`` holds several."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([PYTHON, "-m", "tests.reliability.zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, cwd=ROOT)
        self._buffer = b""

    def _reply(self, timeout: float | None) -> dict[str, int] | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0)
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the zygote exited ({self.proc.wait()})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)  # type: ignore[no-any-return]

    def start(self, *argv: str, cwd: pathlib.Path, env: dict[str, str] | None = None) -> Started:
        """Fork ``gitopsd ARGV``; returns at once with its pid (for kill -9 at a chosen moment)."""
        cwd.mkdir(parents=True, exist_ok=True)
        out = _temp_path(cwd, ".out-")
        err = _temp_path(cwd, ".err-")
        request = {"argv": list(argv), "cwd": str(cwd), "stdout": str(out), "stderr": str(err), "env": env or {}}
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        reply = self._reply(30)
        assert reply is not None, "the zygote did not fork"
        return Started(list(argv), reply["pid"], out, err, time.monotonic())

    def finish(self, started: Started, timeout: float = 120.0) -> Run:
        reply = self._reply(timeout)
        timed_out = reply is None
        if reply is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.pid, signal.SIGKILL)
            reply = self._reply(30)
            assert reply is not None
        run = Run(started.argv, os.waitstatus_to_exitcode(reply["status"]), started.stdout.read_text("utf-8", "replace"),
                  started.stderr.read_text("utf-8", "replace"), reply["maxrss"], time.monotonic() - started.at, timed_out)
        started.stdout.unlink()
        started.stderr.unlink()
        return run

    def run(self, *argv: str, cwd: pathlib.Path, timeout: float = 120.0, env: dict[str, str] | None = None) -> Run:
        return self.finish(self.start(*argv, cwd=cwd, env=env), timeout)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@dataclasses.dataclass
class Started:
    argv: list[str]
    pid: int
    stdout: pathlib.Path
    stderr: pathlib.Path
    at: float


class ZygotePool:
    def __init__(self, size: int) -> None:
        self._all = [Zygote() for _ in range(size)]
        self._free: queue.Queue[Zygote] = queue.Queue()
        for zygote in self._all:
            self._free.put(zygote)

    @contextlib.contextmanager
    def get(self) -> Iterator[Zygote]:
        zygote = self._free.get()
        try:
            yield zygote
        finally:
            self._free.put(zygote)

    def run(self, *argv: str, cwd: pathlib.Path, timeout: float = 120.0, env: dict[str, str] | None = None) -> Run:
        with self.get() as zygote:
            return zygote.run(*argv, cwd=cwd, timeout=timeout, env=env)

    def close(self) -> None:
        for zygote in self._all:
            zygote.close()


WORKERS = max(2, min(4, os.cpu_count() or 2))


# --- reading the embedded backends back --------------------------------------------------------------
def store_objects(state_dir: pathlib.Path, kind: str) -> list[dict[str, object]]:
    """Objects of ``kind`` in the SQLite store, opened read-only (``[]`` when there is no store)."""
    path = state_dir / "store.db"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT body, resource_version FROM objects WHERE kind=? ORDER BY namespace, name",
                          (kind,)).fetchall()
    finally:
        db.close()
    out = []
    for body, rv in rows:
        obj = json.loads(body)
        obj["metadata"]["resourceVersion"] = str(rv)
        out.append(obj)
    return out


def store_events(state_dir: pathlib.Path) -> list[dict[str, str]]:
    path = state_dir / "store.db"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT kind, name, type, reason, message, revision FROM events ORDER BY id").fetchall()
    finally:
        db.close()
    return [dict(zip(("kind", "name", "type", "reason", "message", "revision"), r, strict=True)) for r in rows]


def integrity(state_dir: pathlib.Path) -> str:
    db = sqlite3.connect(str(state_dir / "store.db"))
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def index_refs(state_dir: pathlib.Path) -> list[str]:
    """Every ``ref.name`` annotation of the OCI layout's index.json."""
    path = state_dir / "oci" / "index.json"
    if not path.exists():
        return []
    index = json.loads(path.read_text("utf-8"))
    return [str(d.get("annotations", {}).get("org.opencontainers.image.ref.name", "")) for d in index["manifests"]]


def layout_problems(state_dir: pathlib.Path) -> list[str]:
    """What is wrong with the OCI layout: unparsable index, a blob whose bytes do not match its
    name, an index entry or manifest naming a blob that is missing."""
    root = state_dir / "oci"
    problems = []
    blobs = root / "blobs" / "sha256"
    present = set()
    for blob in sorted(blobs.iterdir()) if blobs.is_dir() else []:
        if blob.name.startswith(".tmp-"):
            continue  # an interrupted atomic write: never referenced, harmless
        present.add(blob.name)
        if hashlib.sha256(blob.read_bytes()).hexdigest() != blob.name:
            problems.append(f"blob {blob.name} does not match its digest")
    index_path = root / "index.json"
    if not index_path.exists():
        return problems
    try:
        index = json.loads(index_path.read_text("utf-8"))
    except ValueError as err:
        return [*problems, f"index.json does not parse: {err}"]
    for descriptor in index.get("manifests", []):
        hexdigest = str(descriptor["digest"]).split(":", 1)[1]
        if hexdigest not in present:
            problems.append(f"index names manifest {descriptor['digest']} that is not in blobs/")
            continue
        manifest = json.loads((blobs / hexdigest).read_bytes())
        for layer in [manifest["config"], *manifest["layers"]]:
            if str(layer["digest"]).split(":", 1)[1] not in present:
                problems.append(f"manifest {descriptor['digest']} names blob {layer['digest']} that is not in blobs/")
    return problems


def final_state(state_dir: pathlib.Path) -> dict[str, object]:
    """The store's ClusterPacks and PackInstances minus what differs between equivalent runs
    (timestamps, resourceVersions, uids, signatures made by different keys stay comparable because
    the key lives in the state dir)."""

    def strip(obj: object) -> object:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in sorted(obj.items())
                    if k not in ("resourceVersion", "uid", "generation", "lastTransitionTime", "time", "installedAt",
                                 "creationTimestamp", "observedAt", "lastUpdated")}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return {
        "packs": {o["metadata"]["name"]: strip({"annotations": o["metadata"].get("annotations"), "spec": o["spec"],  # type: ignore[index, union-attr]
                                                "status": o.get("status")})
                  for o in store_objects(state_dir, CLUSTER_PACK)},
        "instances": {o["metadata"]["name"]: strip({"spec": o["spec"], "status": o.get("status")})  # type: ignore[index]
                      for o in store_objects(state_dir, PACK_INSTANCE)},
        "refs": sorted(index_refs(state_dir)),
    }


# --- hostile-input cases -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    """One folder of ``corpus/``: ``case.yaml`` (what it is and what gitopsd must say) plus ``repo/``,
    files laid over a copy of examples-repo. Big, binary or special files are generated from
    ``case.yaml`` so that the corpus stays small and readable."""

    id: str
    about: str
    folder: pathlib.Path
    base: str  # basePackName (or pack folder name) that must leave no trace
    reason: str
    names: tuple[str, ...]  # substrings the one-line error must hold: the file, the field, ...
    fix: str  # the part that tells what to do
    bomb: bool
    generate: tuple[dict[str, object], ...]
    links: tuple[tuple[str, str], ...]
    fifos: tuple[str, ...]
    timeout: float
    git: bool  # also run on a Git work tree of the same files
    xfail: str | None  # a known bug in a file this suite does not own: where, and what the fix is

    def __str__(self) -> str:
        return self.id


def load_cases(corpus: pathlib.Path = CORPUS) -> list[Case]:
    cases = []
    for folder in sorted(p for p in corpus.iterdir() if (p / "case.yaml").is_file()):
        doc = yaml.safe_load((folder / "case.yaml").read_text("utf-8"))
        expect = doc["expect"]
        cases.append(Case(
            id=folder.name,
            about=doc["about"],
            folder=folder,
            base=doc.get("base", "hostile"),
            reason=expect["reason"],
            names=tuple(expect["names"]),
            fix=expect["fix"],
            bomb=bool(doc.get("bomb", False)),
            generate=tuple(doc.get("generate", ())),
            links=tuple((str(k), str(v)) for k, v in (doc.get("links") or {}).items()),
            fifos=tuple(doc.get("fifos", ())),
            timeout=float(doc.get("timeout", 90)),
            git=bool(doc.get("git", False)),
            xfail=doc.get("xfail"),
        ))
    return cases


def corpus_problems(case: Case, run: Run, state: pathlib.Path, *, max_rss_mib: float = 500) -> list[str]:
    """What is wrong with how gitopsd handled ``case`` (empty when all is well): the pass must go
    through with exactly the bad pack failed, on one printable line naming the file, the field and
    the fix; the example packs must reconcile; nothing of the bad pack may be applied or published;
    no traceback, no timeout, peak RSS under ``max_rss_mib``."""
    if run.timed_out:
        return [f"timed out after {run.seconds:.0f}s"]
    problems = []
    if "Traceback" in run.stderr:
        problems.append("a traceback on stderr")
    if run.returncode != 1:
        problems.append(f"exit code {run.returncode}, expected 1 (a pack failed, the pass went through)")
    if run.max_rss_mib >= max_rss_mib:
        problems.append(f"peak RSS {run.max_rss_mib:.0f} MiB, over {max_rss_mib} MiB")
    try:
        result = json.loads(run.stdout)
    except ValueError:
        return [*problems, "stdout is not the JSON result"]
    errors = result.get("errors", [])
    if len(errors) != 1:
        problems.append(f"{len(errors)} pack errors, expected 1: {json.dumps(errors)[:1000]}")
    else:
        error = errors[0]
        line = error["message"] if error["path"] in error["message"] else f"{error['path']}: {error['message']}"
        if error["reason"] != case.reason:
            problems.append(f"reason {error['reason']}, expected {case.reason}: {line[:300]}")
        if not line.isprintable():
            problems.append(f"not one printable line: {line[:300]!r}")
        if len(line) >= 600:
            problems.append(f"{len(line)} characters: {line[:300]}...")
        problems += [f"{needle!r} not in: {line[:600]}" for needle in case.names if needle not in line]
        if case.fix not in line:
            problems.append(f"fix {case.fix!r} not in: {line[:600]}")
    expected = example_packs()
    packs = {o["spec"]["basePackName"]: o["spec"]["version"] for o in store_objects(state, CLUSTER_PACK)}  # type: ignore[index]
    if packs != expected:
        problems.append(f"ClusterPacks {packs}, expected the example packs {expected}")
    instances = store_objects(state, PACK_INSTANCE)
    if {o["spec"]["basePackName"] for o in instances} != set(expected):  # type: ignore[index]
        problems.append(f"PackInstances of {sorted({o['spec']['basePackName'] for o in instances})}")  # type: ignore[index]
    if not all(o["status"]["state"] == "installed" for o in instances):  # type: ignore[index]
        problems.append("a PackInstance is not installed")
    refs = sorted(r.split(":", 1)[0] for r in index_refs(state))
    if refs != sorted(expected):
        problems.append(f"OCI index refs {refs}, expected the example packs only")
    return problems


def _generated(spec: dict[str, object], copy: int) -> bytes:
    if "text" in spec:
        return str(spec["text"]).encode("utf-8")
    if "hex" in spec:
        return bytes.fromhex(str(spec["hex"]))
    head = str(spec.get("head", "")).encode("utf-8")
    tail = str(spec.get("tail", "")).encode("utf-8")
    unit = str(spec["repeat"]).replace("{n}", str(copy)).encode("utf-8")
    times = int(spec["times"])  # type: ignore[call-overload]
    if b"{i}" in unit:
        body = b"".join(unit.replace(b"{i}", str(i).encode()) for i in range(times))
    else:
        body = unit * times
    middle = str(spec.get("middle", "")).encode("utf-8")
    close = str(spec.get("close", "")).encode("utf-8") * times  # closing brackets of nested openers
    return head + body + middle + close + tail


def build_repo(case: Case, dest: pathlib.Path) -> pathlib.Path:
    """examples-repo, plus the case's files, generated files, symlinks and FIFOs, at ``dest``."""
    shutil.copytree(EXAMPLES, dest)
    extra = case.folder / "repo"
    if extra.is_dir():
        shutil.copytree(extra, dest, dirs_exist_ok=True, symlinks=True)
    for spec in case.generate:
        for copy in range(int(spec.get("copies", 1))):  # type: ignore[call-overload]
            rel = str(spec["path"]).replace("{n}", str(copy))
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_generated(spec, copy))
    for rel, target in case.links:
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
    for rel in case.fifos:
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
    return dest


def commit_all(repo: pathlib.Path) -> None:
    """Make ``repo`` a Git work tree with everything committed (symlinks stay symlinks)."""
    git = ["git", "-C", str(repo), "-c", "user.name=gitopsd-test", "-c", "user.email=test@example.com",
           "-c", "commit.gpgsign=false", "-c", "core.symlinks=true"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "config repo"], check=True)


# --- memory figures, printed at the end of the run by tests/reliability/conftest.py --------------------
MEMORY: list[tuple[str, float, float]] = []  # (what, peak RSS MiB, seconds)


# --- crash safety: a small repo in two revisions, kill -9 trials -------------------------------------
CLUSTERS = {"edge-a": "prod", "edge-b": "prod", "lab": "dev"}


def write_pack_repo(dest: pathlib.Path, *, packs: int = 10, revision: str = "A") -> pathlib.Path:
    """A config repo of ``packs`` raw packs over three clusters. Revision ``B`` bumps four packs
    (new content, new version), removes the last one and adds a new one: creates, supersedes and
    an uninstall in one pass."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "clusters").mkdir(parents=True)
    (dest / "gitopsd.yaml").write_text("namespace: seam-system\nregistry: registry.example.com/packs\n")
    for name, env in CLUSTERS.items():
        (dest / "clusters" / f"{name}.yaml").write_text(f"name: {name}\nlabels: {{env: {env}}}\n")
    names = [f"app-{i:02d}" for i in range(packs)]
    if revision == "B":
        names = [*names[:-1], "app-new"]
    for index, name in enumerate(names):
        bumped = revision == "B" and index % 3 == 0
        version = "1.1.0" if bumped else "1.0.0"
        folder = dest / "packs" / name
        (folder / "manifests").mkdir(parents=True)
        targets = "[edge-a, edge-b, lab]" if index % 2 else "[{matchLabels: {env: prod}}]"
        (folder / "packbuild.yaml").write_text(gitutil.packbuild(name, version, namespace=name, targets=targets, priority=index))
        payload = "".join(f"  key{j}: value-{version}-{j}-{'x' * 40}\n" for j in range(40))
        (folder / "manifests" / "rbac.yaml").write_text(
            f"apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}}}\n---\n"
            f"apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}}}\n"
            "rules: [{apiGroups: [''], resources: [configmaps], verbs: [get]}]\n")
        statefulset = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": f"{name}-db"},
                       "spec": {"serviceName": name, "selector": {"matchLabels": {"app": name}},
                                "template": {"metadata": {"labels": {"app": name}},
                                             "spec": {"containers": [{"name": "db", "image": "postgres:16"}]}}}}
        deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"{name}-web"},
                      "spec": {"selector": {"matchLabels": {"app": f"{name}-web"}},
                               "template": {"metadata": {"labels": {"app": f"{name}-web"}},
                                            "spec": {"containers": [{"name": "web", "image": f"nginx:{version}"}]}}}}
        pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"{name}-data"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
        (folder / "manifests" / "app.yaml").write_text(
            f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}-config}}\ndata:\n{payload}"
            + "".join(f"---\n{json.dumps(doc)}\n" for doc in (pvc, statefulset, deployment)))
    return dest


@dataclasses.dataclass
class CrashWorld:
    """Everything the trials share: both revisions, the key, the prepared base state and the
    final state an uninterrupted pass reaches from an empty and from the base state."""

    root: pathlib.Path
    repo: pathlib.Path  # revision B: what the daemon reconciles
    key: pathlib.Path
    base_state: pathlib.Path  # revision A reconciled
    references: dict[str, dict[str, object]]  # start ("empty" | "base") -> final_state
    initial: dict[str, dict[str, object]]  # start -> final_state before any pass
    pass_seconds: float  # the longest uninterrupted pass, to spread the kills over


def make_crash_world(root: pathlib.Path, zygote: Zygote | ZygotePool, *, packs: int = 10) -> CrashWorld:
    from gitopsd.adapters import keys  # noqa: PLC0415 - only the crash tests need it

    root.mkdir(parents=True, exist_ok=True)
    key = keys.generate(root / "key").private_path
    repo_a = write_pack_repo(root / "repo-a", packs=packs, revision="A")
    repo = write_pack_repo(root / "repo-b", packs=packs, revision="B")
    base = root / "base-state"
    first = zygote.run("reconcile", str(repo_a), "--state-dir", str(base), "--signing-key", str(key), cwd=root)
    assert first.returncode == 0, first.describe()
    references: dict[str, dict[str, object]] = {}
    initial = {"empty": {"packs": {}, "instances": {}, "refs": []}, "base": final_state(base)}
    seconds = 0.0
    for start in ("empty", "base"):
        state = root / f"reference-{start}"
        if start == "base":
            shutil.copytree(base, state)
        run = zygote.run("run", str(repo), "--once", "--state-dir", str(state), "--signing-key", str(key),
                         "--listen", "off", "--log-level", "warning", cwd=root)
        assert run.returncode == 0, run.describe()
        seconds = max(seconds, run.seconds)
        references[start] = final_state(state)
    return CrashWorld(root, repo, key, base, references, initial, seconds)


@dataclasses.dataclass
class Trial:
    start: str
    delay: float
    phase: str  # what the crash left in the store: "before apply", "after apply" or "half-applied"
    failures: list[str]
    lost: int  # reference objects missing or different after the restart
    debris: int  # .tmp- files an interrupted atomic write left in the OCI layout
    untagged: list[str]  # refs an uninterrupted run has in index.json and this one lacks


def crash_trial(world: CrashWorld, zygote: Zygote, workdir: pathlib.Path, *, start: str, delay: float) -> Trial:
    """``gitopsd run`` killed with SIGKILL ``delay`` seconds after it started; then one
    ``reconcile`` (the restart) must reach the reference state, and every check must pass on the
    state as the crash left it and as the restart left it."""
    workdir.mkdir(parents=True, exist_ok=True)
    state = workdir / "state"
    if start == "base":
        shutil.copytree(world.base_state, state)
    key, pub = str(world.key), f"{world.key}.pub"
    started = zygote.start("run", str(world.repo), "--state-dir", str(state), "--interval", "0.2s", "--listen", "off",
                           "--signing-key", key, "--log-level", "warning", cwd=workdir)
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(started.pid, signal.SIGKILL)
    killed = zygote.finish(started, timeout=30)
    failures = []
    if killed.returncode != -signal.SIGKILL:
        failures.append(f"the daemon ended by itself ({killed.returncode}): {killed.stderr[-500:]}")
    if "Traceback" in killed.stderr:
        failures.append(f"traceback before the kill: {killed.stderr[-1500:]}")
    failures += [f"after the crash: {p}" for p in state_checks(zygote, state, pub, workdir)]
    crashed = final_state(state) if (state / "store.db").exists() else world.initial["empty"]
    objects = {k: crashed[k] for k in ("packs", "instances")}
    if objects == {k: world.initial[start][k] for k in ("packs", "instances")}:
        phase = "before apply"
    elif objects == {k: world.references[start][k] for k in ("packs", "instances")}:
        phase = "after apply"
    else:
        phase = "half-applied"
        failures.append("the store holds part of a pass (neither the state before it nor after it)")
    restart = zygote.run("reconcile", str(world.repo), "--state-dir", str(state), "--signing-key", key, "-o", "json",
                         cwd=workdir, timeout=60)
    if restart.returncode != 0:
        failures.append(f"restart: {restart.describe()[-1500:]}")
    failures += [f"after the restart: {p}" for p in state_checks(zygote, state, pub, workdir)]
    got, want = final_state(state), world.references[start]
    lost = 0
    for section in ("packs", "instances"):
        mine, theirs = got[section], want[section]  # type: ignore[index]
        for name, value in theirs.items():  # type: ignore[union-attr]
            if mine.get(name) != value:  # type: ignore[union-attr]
                lost += 1
                failures.append(f"{section} {name}: {'missing' if name not in mine else 'differs'} after the restart")
        for name in set(mine) - set(theirs):  # type: ignore[arg-type]
            failures.append(f"{section} {name}: not in an uninterrupted run")
    untagged = sorted(set(want["refs"]) - set(got["refs"]))  # type: ignore[arg-type]
    extra_refs = sorted(set(got["refs"]) - set(want["refs"]))  # type: ignore[arg-type]
    if extra_refs:
        failures.append(f"OCI index refs not in an uninterrupted run: {extra_refs}")
    blobs = state / "oci" / "blobs" / "sha256"
    debris = sum(1 for p in blobs.iterdir() if p.name.startswith(".tmp-")) if blobs.is_dir() else 0
    return Trial(start, delay, phase, failures, lost, debris, untagged)


def state_checks(zygote: Zygote, state: pathlib.Path, trusted: str, workdir: pathlib.Path) -> list[str]:
    """SQLite integrity, OCI layout sound (index parses, blobs match digests, nothing missing) and
    every stored ClusterPack verifies (signature, artifact blobs)."""
    if not (state / "store.db").exists():
        return []
    problems = []
    verdict = integrity(state)
    if verdict != "ok":
        problems.append(f"PRAGMA integrity_check: {verdict}")
    problems += layout_problems(state)
    verify = zygote.run("verify", "--state-dir", str(state), "--trusted-keys", trusted, "-o", "json", cwd=workdir)
    if verify.returncode != 0:
        problems.append(f"gitopsd verify: {verify.stdout[-1500:]} {verify.stderr[-500:]}")
    return problems


CHAOS: list[tuple[str, int, int, int]] = []  # (scenario, trials, failures, lost items), printed at the end


@dataclasses.dataclass
class Tally:
    """What one fault scenario did (its ``row`` goes to CHAOS; ``bench/chaos`` reuses the scenarios)."""

    scenario: str
    trials: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)  # one line per failed trial
    lost: int = 0
    notes: str = ""

    def row(self) -> tuple[str, int, int, int]:
        return (self.scenario, self.trials, len(self.failures), self.lost)


# --- registry faults: an HTTP proxy on loopback in front of the real registry ------------------------
class FaultProxy:
    """Forwards to a registry, or misbehaves: ``mode`` is read per request, so a test can switch it.

    modes: ``pass``; ``500`` (every request answered 500); ``slow`` (``delay`` seconds before
    forwarding); ``reset`` (the connection closed without an answer); ``flaky`` (the first
    ``flaky_count`` requests get 503, then pass); ``corrupt-blob`` (blob GETs served with one byte
    flipped, same length); ``digest-lie`` (manifest PUTs answered with another
    Docker-Content-Digest); ``lying-head`` (blob HEADs answer 200 whether or not the blob exists).
    """

    def __init__(self, upstream: str) -> None:
        import http.client  # noqa: PLC0415
        import http.server  # noqa: PLC0415
        import threading  # noqa: PLC0415

        self.upstream = upstream
        self.mode = "pass"
        self.delay = 0.0
        self.flaky_count = 0
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.arrived = 0  # requests received, answered or not yet (a slow answer is recorded late)
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _record(self, status: int) -> None:
                with proxy.lock:
                    proxy.requests.append((self.command, self.path.split("?", 1)[0], status))

            def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self._record(status)
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                with proxy.lock:
                    proxy.arrived += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                mode = proxy.mode
                path = self.path.split("?", 1)[0]
                error = json.dumps({"errors": [{"code": "UNKNOWN", "message": "injected"}]}).encode()
                if mode == "500":
                    return self._answer(500, error, {"Content-Type": "application/json"})
                if mode == "reset":
                    self._record(0)
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                if mode == "flaky":
                    with proxy.lock:
                        proxy.flaky_count -= 1
                        fail = proxy.flaky_count >= 0
                    if fail:
                        return self._answer(503, error, {"Content-Type": "application/json"})
                if mode == "slow":
                    time.sleep(proxy.delay)
                if mode == "lying-head" and self.command == "HEAD" and "/blobs/" in path:
                    return self._answer(200, b"", {"Docker-Content-Digest": path.rsplit("/", 1)[1]})
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                out_headers = {k: v for k, v in response.getheaders()
                               if k.lower() not in ("content-length", "connection", "transfer-encoding")}
                if mode == "corrupt-blob" and self.command == "GET" and "/blobs/" in path and data:
                    data = bytes([data[0] ^ 0x01]) + data[1:]
                if mode == "digest-lie" and self.command == "PUT" and "/manifests/" in path:
                    out_headers["Docker-Content-Digest"] = "sha256:" + "0" * 64
                conn.close()
                return self._answer(response.status, data, out_headers)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def attempts(self) -> collections.Counter[tuple[str, str]]:
        with self.lock:
            return collections.Counter((method, path) for method, path, _ in self.requests)

    def longest_streak(self) -> tuple[int, dict[tuple[str, str], int]]:
        """The most times one request (method, path) was tried in a row without an answer below 500."""
        streaks: dict[tuple[str, str], int] = {}
        worst = 0
        for method, path, status in list(self.requests):
            key = (method, path)
            streaks[key] = streaks.get(key, 0) + 1 if status >= 500 or status == 0 else 0
            worst = max(worst, streaks[key])
        return worst, streaks

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
