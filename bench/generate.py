"""Generate a synthetic config repo: N packs x M clusters, a realistic mix, as a real Git repo.

Packs alternate raw and kustomize (one in five is kustomize), 5-40 objects each: RBAC, a CRD now
and then, Deployments, StatefulSets, Services and ConfigMaps of a few KiB. The repo is committed
with ``git fast-import`` (one commit, fast even for 10,000 packs) and a bare remote is made beside it.

    python bench/generate.py OUT --packs 1000 --clusters 10 [--seed 1]
"""

from __future__ import annotations

import argparse
import pathlib
import random
import subprocess
import sys


def pack_files(index: int, rng: random.Random, clusters: int) -> dict[str, str]:
    name = f"pack-{index:05d}"
    kustomize = index % 5 == 0
    count = rng.randint(5, 40)
    docs = []
    docs.append(f"apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n")
    docs.append(
        f"apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {name}\nrules:\n"
        "  - apiGroups: ['']\n    resources: [configmaps, secrets]\n    verbs: [get, list, watch]\n"
    )
    if index % 10 == 0:
        docs.append(
            f"apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: things{index}.example.com\n"
            f"spec:\n  group: example.com\n  scope: Namespaced\n  names: {{kind: Thing{index}, plural: things{index}}}\n"
            "  versions: [{name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object}}}]\n"
        )
    while len(docs) < count:
        i = len(docs)
        kind = rng.choice(["Deployment", "Deployment", "StatefulSet", "Service", "ConfigMap", "ConfigMap"])
        obj = f"{name}-{kind.lower()}-{i}"
        if kind == "ConfigMap":
            payload = "".join(f"    line{j}: {rng.getrandbits(64):016x}{rng.getrandbits(64):016x}\n"
                              for j in range(rng.randint(20, 80)))
            docs.append(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {obj}\ndata:\n  settings.yaml: |\n{payload}")
        elif kind == "Service":
            docs.append(f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {obj}\nspec:\n  selector: {{app: {obj}}}\n"
                        "  ports: [{port: 80, targetPort: 8080}]\n")
        else:
            extra = "  serviceName: svc\n" if kind == "StatefulSet" else ""
            docs.append(
                f"apiVersion: apps/v1\nkind: {kind}\nmetadata:\n  name: {obj}\n  labels: {{app: {obj}}}\nspec:\n{extra}"
                f"  replicas: {rng.randint(1, 5)}\n  selector: {{matchLabels: {{app: {obj}}}}}\n  template:\n"
                f"    metadata: {{labels: {{app: {obj}}}}}\n    spec:\n      serviceAccountName: {name}\n      containers:\n"
                f"        - name: main\n          image: registry.example.com/{name}:1.0.{i}\n"
                "          resources: {requests: {cpu: 50m, memory: 64Mi}}\n"
            )
    files: dict[str, str] = {}
    targets = "[" + ", ".join(f"c{c:03d}" for c in range(clusters)) + "]"
    if kustomize:
        files[f"packs/{name}/base/all.yaml"] = "---\n".join(docs)
        files[f"packs/{name}/base/kustomization.yaml"] = "resources: [all.yaml]\n"
        files[f"packs/{name}/overlay/kustomization.yaml"] = (
            f"namespace: {name}\nresources: [../base]\ncommonLabels: {{pack: {name}}}\n")
        source = "category: kustomize\nkustomizeSource: {path: overlay}\n"
    else:
        for j in range(0, len(docs), 8):
            files[f"packs/{name}/manifests/part-{j // 8:02d}.yaml"] = "---\n".join(docs[j:j + 8])
        source = f"category: raw\nrawSource: {{path: manifests}}\nnamespace: {name}\n"
    files[f"packs/{name}/packbuild.yaml"] = (
        f"name: {name}\nversion: 1.0.0\nbasePackName: {name}\n{source}targetClusters: {targets}\npriority: {index % 7}\n"
    )
    return files


def generate(out: pathlib.Path, packs: int, clusters: int, seed: int) -> pathlib.Path:
    rng = random.Random(seed)
    files = {"gitopsd.yaml": "namespace: seam-system\n"}
    for c in range(clusters):
        files[f"clusters/c{c:03d}.yaml"] = f"name: c{c:03d}\nlabels: {{env: {'prod' if c % 2 else 'dev'}}}\n"
    for i in range(packs):
        files.update(pack_files(i, rng, clusters))
    work = out / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    stream = ["commit refs/heads/main", "committer bench <bench@example.com> 1700000000 +0000", "data 6", "bench", ""]
    chunks = ["\n".join(stream).encode() + b"\n"]
    for path, text in sorted(files.items()):
        data = text.encode()
        chunks.append(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
    body = b"".join(chunks)
    subprocess.run(["git", "-C", str(work), "fast-import", "--quiet"], input=body, check=True)
    subprocess.run(["git", "-C", str(work), "checkout", "-q", "main"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(out / "remote.git")], check=True)
    return work


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=pathlib.Path)
    p.add_argument("--packs", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    work = generate(args.out, args.packs, args.clusters, args.seed)
    print(f"generated {args.packs} packs x {args.clusters} clusters in {work} (bare remote {args.out / 'remote.git'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
