"""Push and pull times of pack artifacts against a real registry (Debian's docker-registry on loopback).

Two workloads: the five examples-repo packs (compiled with the real renderers) and one ~1 MiB
artifact (ConfigMaps of random text). For each: first push (everything uploaded), second push
(nothing uploaded: HEAD requests only), pull, and verify; median of --rounds, each round into a fresh
repository path. Run: ``.venv/bin/python bench/registry_push.py [--rounds 5] [--tls]``; ``--tls`` uses
TLS with htpasswd basic auth instead of plain http.
"""

from __future__ import annotations

import argparse
import pathlib
import secrets
import statistics
import string
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gitopsd import compiling, logs, reconcile  # noqa: E402
from gitopsd.adapters import fakes, registry, render, schemafiles, system  # noqa: E402
from gitopsd.core import compile as compile_core  # noqa: E402
from gitopsd.model import pack, spec  # noqa: E402
from tests import registry_fixture  # noqa: E402


def example_artifacts(scratch: pathlib.Path) -> list[tuple[str, pack.Artifact]]:
    env = reconcile.Env(
        source=system.LocalSource(ROOT / "examples-repo", scratch / "trees"), cluster=fakes.MemoryCluster(),
        registry=fakes.MemoryRegistry(), cache=fakes.MemoryCache(), clock=fakes.FixedClock(),
        renderers=render.renderers(), schemas=schemafiles.schemas(),
    )
    state = reconcile.PassState()
    for step in (reconcile.fetch, reconcile.load_specs, compiling.compile_packs):
        step(env, state)
    if state.pack_errors:
        raise SystemExit(f"examples-repo did not compile: {state.pack_errors}")
    out = []
    for result in state.compiled:
        assert result.compiled.artifact is not None
        out.append((result.compiled.cluster_pack.base_pack_name, result.compiled.artifact))
    return out


def big_artifact(size: int = 1 << 20) -> list[tuple[str, pack.Artifact]]:
    rng = secrets.SystemRandom(7)
    alphabet = string.ascii_letters + string.digits
    docs, chunk = [], 64 * 1024
    for i in range(size // chunk):
        text = "".join(rng.choice(alphabet) for _ in range(chunk))
        docs.append(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: blob-{i:02d}, namespace: big}}\ndata: {{v: {text}}}\n")
    build = spec.PackBuild(path="packs/big/packbuild.yaml", name="big", version="1.0.0", base_pack_name="big",
                           targets=(spec.ClusterTarget(name="dev"),), category=spec.Category.RAW,
                           source=spec.RawSource(path="packs/big/manifests"))
    inputs = compile_core.Inputs(namespace="seam-system", registry="bench.test/packs", target_clusters=("dev",),
                                 revision="main@sha1:" + "0" * 40, commit_time="2026-01-01T00:00:00Z",
                                 tree_id="sha256:" + "0" * 64, compiler="gitopsd/bench")
    compiled = compile_core.compile_pack(build, (("big.yaml", "---\n".join(docs).encode()),), renderers=(),
                                         chart=None, inputs=inputs)
    assert compiled.artifact is not None
    return [("big", compiled.artifact)]


class Counter:
    def __init__(self, reg: registry.OciRegistry) -> None:
        self.count = 0
        reg.session.hooks["response"].append(self._hook)

    def _hook(self, response: object, **_: object) -> None:
        self.count += 1


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(make: Callable[[], registry.OciRegistry], artifacts: list[tuple[str, pack.Artifact]],
            rounds: int) -> dict[str, tuple[float, int]]:
    figures: dict[str, list[tuple[float, int]]] = {"push (first)": [], "push (again)": [], "pull": [], "verify": []}
    for _ in range(rounds):
        reg = make()
        counter = Counter(reg)
        for label, action in (
            ("push (first)", lambda reg=reg: [reg.push(repo, art) for repo, art in artifacts]),
            ("push (again)", lambda reg=reg: [reg.push(repo, art) for repo, art in artifacts]),
            ("pull", lambda reg=reg: [reg.pull(repo, art.manifest_digest) for repo, art in artifacts]),
            ("verify", lambda reg=reg: [reg.verify(repo, art.manifest_digest) for repo, art in artifacts]),
        ):
            before = counter.count
            figures[label].append((timed(action), counter.count - before))
        problems = [p for repo, art in artifacts for p in reg.verify(repo, art.manifest_digest)]
        if problems:
            raise SystemExit(f"verify found problems: {problems}")
    return {label: (statistics.median(t for t, _ in runs), runs[0][1]) for label, runs in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tls", action="store_true", help="TLS + htpasswd basic auth instead of plain http")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        options: dict[str, object] = {"environ": {}}
        if args.tls:
            ca, ca_key, ca_cert = registry_fixture.make_ca(work)
            cert, key = registry_fixture.make_server_cert(work, ca_key, ca_cert)
            htpasswd = registry_fixture.make_htpasswd(work / "htpasswd", registry_fixture.USERNAME, registry_fixture.PASSWORD)
            running = registry_fixture.start_registry(work / "registry", tls=(ca, cert, key), htpasswd=htpasswd)
            (work / "user").write_text(registry_fixture.USERNAME)
            (work / "pass").write_text(registry_fixture.PASSWORD)
            options |= {"ca": ca, "username_file": work / "user", "password_file": work / "pass"}
        else:
            running = registry_fixture.start_registry(work / "registry")
            options |= {"insecure": True}
        try:
            def make() -> registry.OciRegistry:
                return registry.OciRegistry(f"{running.host}/b{uuid.uuid4().hex[:10]}", **options)  # type: ignore[arg-type]

            mode = "TLS + basic auth" if args.tls else "plain http"
            print(f"docker-registry on {running.host} ({mode}), median of {args.rounds} rounds, fresh repositories each")
            for title, artifacts in (("examples-repo (5 packs)", example_artifacts(work)), ("~1 MiB artifact", big_artifact())):
                size = sum(len(art.manifest) + sum(b.size for b in art.blobs) for _, art in artifacts)
                print(f"\n{title}: {len(artifacts)} artifact(s), {size / 1024:.1f} KiB")
                for label, (seconds, requests) in measure(make, artifacts, args.rounds).items():
                    print(f"  {label:<13} {seconds * 1000:8.1f} ms  {requests:3d} HTTP requests")
        finally:
            running.stop()


if __name__ == "__main__":
    logs.configure("warning")
    main()
