"""``gitopsd verify``: every stored ClusterPack's signature and artifact, and the status records.

``gitopsd.cli.main`` registers it with ``cli_verify.add_parser(sub)``. The store is the local one or,
with a Kubernetes flag, the management cluster (read only); the artifacts are the OCI layout's or,
with ``--registry``, the registry's; the config repo's ``.gitopsd/status`` records must agree with
the verified ClusterPacks. One line per pack and per record; exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import json

from gitopsd import errors, output
from gitopsd.adapters import localstore
from gitopsd.cli import flags
from gitopsd.core import signing, yamlload
from gitopsd.core import status as status_core
from gitopsd.model import instance
from gitopsd.wiring import compose as wiring
from gitopsd.wiring import kube as wiring_kube
from gitopsd.wiring import settings as wiring_settings

EXIT_OK, EXIT_FAILED = 0, 1


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "verify", help="check every stored ClusterPack's signature and artifact; exit 1 on any failure",
        description="check every stored ClusterPack: signature against the trusted keys, artifact "
        "blobs against the recorded digests, and the config repo's status records against them; "
        "one line per pack and per record; exit 1 on any failure")
    p.add_argument("repo", metavar="REPO", nargs="?", help="config repo: finds the default state dir, and its "
                   ".gitopsd/status records are checked too")
    flags.common(p, repo=False)
    p.add_argument("--trusted-keys", metavar="PATH", help="trusted public keys (default: the state dir's signing key)")
    p.add_argument("--namespace", default="seam-system", help="namespace of the ClusterPacks (default: %(default)s)")
    flags.registry(p)
    flags.git(p)
    flags.kube(p)
    p.set_defaults(func=cmd_verify)
    return p


def cmd_verify(settings: wiring_settings.Settings) -> int:
    state_dir = wiring.state_dir(settings)
    kube_options = wiring_kube.options(settings)
    if kube_options is None and not (state_dir / "store.db").exists():
        raise errors.ConfigError(f"no local store in {state_dir}; run 'gitopsd reconcile REPO' first", reason="NoStore")
    _, verifier = wiring.signing(state_dir, None, settings.trusted_keys, create=False)
    if verifier is None:
        if kube_options is None:
            store = localstore.LocalStore(state_dir / "store.db", read_only=not wiring.writable(state_dir))
            try:
                signed = store.signed_packs()
            finally:
                store.close()
            if signed:
                raise errors.ConfigError(
                    f"{state_dir / 'keys' / 'signing.key'} is missing, but the local store holds {signed} signed "
                    "ClusterPack(s): restore the key file, or pass --trusted-keys with its public key",
                    reason="SigningKeyMissing")
        raise errors.ConfigError("no trusted keys: pass --trusted-keys or reconcile once to create the local key",
                                 reason="NoTrustedKeys")
    registry_options = settings.registry.options()
    local = wiring.open_local(state_dir, read_only=not wiring.writable(state_dir))
    failures = 0
    results = []
    try:
        artifacts = wiring.open_registry(registry_options) if registry_options else local.layout
        if kube_options is None:
            observed = local.store.observe(settings.namespace)
        else:
            handle = wiring_kube.open_kube(kube_options, daemon=False, writes=False)
            try:
                observed = handle.cluster.observe(settings.namespace)
            finally:
                handle.close()
        for name, found in sorted(observed.packs.items()):
            problems = verify_pack(found, verifier, artifacts)
            failures += bool(problems)
            results.append({"name": name, "ok": not problems, "problems": problems})
        if settings.repo:
            records = wiring.status_records(settings.repo, state_dir, settings.git)
            writers = wiring.status_record_writers(settings.repo, state_dir, settings.git, verifier.trusted)
            for path, data in records:
                problems = verify_record(path, data, observed) + ([writers[path]] if path in writers else [])
                failures += bool(problems)
                results.append({"name": path, "ok": not problems, "problems": problems})
            for missing in missing_records(records, observed):
                failures += 1
                results.append(missing)
    finally:
        local.close()
    if settings.output == "table":
        for r in results:
            mark = "ok  " if r["ok"] else "FAIL"
            what = ("agrees with the verified ClusterPacks" if str(r["name"]).startswith(".gitopsd/")
                    else "signature and artifact verified")
            # the ignore below: problems is a list[str] in a dict[str, object] row
            detail = what if r["ok"] else "; ".join(r["problems"])  # type: ignore[arg-type]
            print(f"{mark} {r['name']}: {detail}")
        record_count = sum(1 for r in results if str(r["name"]).startswith(".gitopsd/"))
        print(f"{len(results) - failures} of {len(results)} verified "
              f"({len(results) - record_count} ClusterPacks, {record_count} status records)")
    else:
        output.dump({"results": results, "failed": failures}, settings.output)
    return EXIT_FAILED if failures else EXIT_OK


def verify_pack(found: instance.ObservedPack, verifier: wiring.KeyVerifier, artifacts: object) -> list[str]:
    """Problems of one stored ClusterPack: its signature over the Go-style JSON of its spec, and its
    artifact as the registry (or the OCI layout) serves it, digest by digest."""
    problems = []
    if not found.signature:
        problems.append("no signature (annotation ontai.dev/pack-signature)")
    elif not verifier.verify(signing.payload_of_spec_json(found.spec_json), found.signature):
        problems.append("signature does not verify against the trusted keys (spec changed or wrong key)")
    spec = json.loads(found.spec_json)
    layers = {field: spec[field] for field in ("rbacDigest", "clusterScopedDigest", "workloadDigest") if spec.get(field)}
    if not found.manifest_digest:
        problems.append("spec.registryRef.digest is empty")
    else:
        # the ignore below: only registries that serve artifacts back have verify(); checked above
        problems.extend(artifacts.verify(found.base_pack_name, found.manifest_digest, layers))  # type: ignore[attr-defined]
    return problems


def verify_record(path: str, data: bytes, observed: instance.Observed) -> list[str]:
    """A status record must agree with what the store or cluster holds (each ClusterPack verified on
    its own): the ClusterPacks it lists (checksum, digests, signature, version, provenance), the
    PackInstances it lists (cluster, version, state, history), and it must be about a pack the store
    knows: a record with neither a ClusterPack nor a PackInstance behind it is invented."""
    try:
        record = yamlload.load_one(data, path)
    except errors.GitopsdError as err:
        return [str(err)]
    if not isinstance(record, dict):
        return ["not a status record (a YAML mapping)"]
    problems = []
    base = str(record.get("basePackName", ""))
    if f"{status_core.STATUS_DIR}/{base}.yaml" != path:
        problems.append(f"basePackName {base!r} does not match the file name")
    entries = record.get("clusterPacks") or []
    listed = record.get("instances") or []
    if not isinstance(entries, list) or not isinstance(listed, list):
        return [*problems, "clusterPacks and instances must be lists"]
    ours = [p for p in observed.packs.values() if p.base_pack_name == base]
    theirs = [i for i in observed.instances.values() if i.base_pack_name == base]
    if not ours and not theirs and (entries or listed or not record.get("errors")):
        problems.append(f"no ClusterPack or PackInstance of {base!r} is in the store or cluster: the record is not gitopsd's")
    for entry in entries:
        entry = entry if isinstance(entry, dict) else {}
        name = str(entry.get("name", "?"))
        found = observed.packs.get(name)
        if found is None:
            problems.append(f"{name} is not in the store or cluster")
            continue
        spec = json.loads(found.spec_json)
        pairs = [("checksum", entry.get("checksum"), found.checksum),
                 ("registryRef.digest", (entry.get("registryRef") or {}).get("digest"), found.manifest_digest),
                 ("packSignature", entry.get("packSignature"), found.signature),
                 ("signed", entry.get("signed"), found.signature is not None),
                 ("version", entry.get("version"), spec.get("version")),
                 ("provenance", entry.get("provenance"), spec.get("provenance", {}))]
        pairs += [(field, entry.get(field), spec.get(field)) for field in ("rbacDigest", "clusterScopedDigest", "workloadDigest")]
        problems += [f"{name}: {field} {mine!r} differs from the stored {theirs!r}"
                     for field, mine, theirs in pairs if mine != theirs]
    for entry in listed:
        entry = entry if isinstance(entry, dict) else {}
        name = str(entry.get("name", "?"))
        pi = observed.instances.get(name)
        if pi is None:
            if entry.get("state") != "blocked":
                problems.append(f"PackInstance {name} is not in the store or cluster")
            continue
        state = entry.get("state")
        pairs = [("cluster", entry.get("cluster"), pi.cluster), ("version", entry.get("version"), pi.version),
                 ("history", entry.get("history"), [r.to_json() for r in pi.history])]
        if not (state == "blocked" and pi.state is not instance.InstallState.INSTALLED):
            pairs.append(("state", state, str(pi.state)))
        problems += [f"PackInstance {name}: {field} {mine!r} differs from the stored {theirs!r}"
                     for field, mine, theirs in pairs if mine != theirs]
    return problems


def missing_records(records: list[tuple[str, bytes]], observed: instance.Observed) -> list[dict[str, object]]:
    """A result per installed PackInstance that no status record lists (records dropped by a force-push)."""
    listed: set[str] = set()
    for path, data in records:
        try:
            record = yamlload.load_one(data, path)
        except errors.GitopsdError:
            continue
        if isinstance(record, dict) and isinstance(record.get("instances"), list):
            listed |= {str(e.get("name")) for e in record["instances"] if isinstance(e, dict)}
    out: list[dict[str, object]] = []
    for name, pi in sorted(observed.instances.items()):
        if pi.state is instance.InstallState.INSTALLED and name not in listed:
            path = f"{status_core.STATUS_DIR}/{pi.base_pack_name}.yaml"
            out.append({"name": path, "ok": False,
                        "problems": [f"PackInstance {name} is installed but no status record lists it"]})
    return out
