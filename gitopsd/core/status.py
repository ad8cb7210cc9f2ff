"""Status records: what gitopsd did for each pack, as YAML files under ``.gitopsd/status/``.

One file per basePackName, validated by ``schemas/status-record.schema.json``. A record only holds
values that change when the pack's state changes (the revision recorded is the one that last
changed the object, not the current one), so a pass with nothing new writes identical bytes and
makes no status commit, and gitopsd's own status commits never cause another one.
"""

from __future__ import annotations

import json
from collections import defaultdict

import yaml

from gitopsd.model import change, instance, pack

STATUS_DIR = ".gitopsd/status"
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # the C emitter: ~20x faster at 1,000 packs


def records(
    plan: change.Plan,
    compiled: list[pack.CompiledPack],
    observed: instance.Observed | None,
    revision: str,
) -> list[tuple[str, bytes]]:
    packs_by_base: dict[str, list[dict[str, object]]] = defaultdict(list)
    source_ref: dict[str, str] = {}
    observed_packs = observed.packs if observed else {}
    for c in compiled:
        cp = c.cluster_pack
        found = observed_packs.get(cp.name)
        if found is not None and found.checksum == cp.checksum:
            spec, signature = json.loads(found.spec_json), found.signature  # what the cluster holds
        else:
            spec, signature = cp.spec(), cp.signature
        entry: dict[str, object] = {
            "name": cp.name,
            "version": spec["version"],
            "checksum": spec["checksum"],
            "registryRef": spec["registryRef"],
            "signed": signature is not None,
            "provenance": spec.get("provenance", {}),
        }
        for key in ("rbacDigest", "clusterScopedDigest", "workloadDigest"):
            if spec.get(key):
                entry[key] = spec[key]
        if signature:
            entry["packSignature"] = signature
        packs_by_base[cp.base_pack_name].append(entry)
        source_ref[cp.base_pack_name] = cp.source_build_ref
    instances_by_base: dict[str, list[dict[str, object]]] = defaultdict(list)
    latest_rev: dict[str, str] = {}
    observed_instances = observed.instances if observed else {}
    for c in plan.changes:
        if c.kind is not change.ObjectKind.PACK_INSTANCE:
            continue
        pi = c.pack_instance or observed_instances.get(c.name)
        if pi is None:
            entry = {"name": c.name, "cluster": c.cluster or "", "state": "blocked", "version": c.version}
        else:
            latest = pi.history[-1] if pi.history else None
            entry = {
                "name": pi.name,
                "cluster": pi.cluster,
                "state": "blocked" if c.action is change.Action.BLOCKED and pi.state is not instance.InstallState.INSTALLED else str(pi.state),
                "version": pi.version,
                "upgradeFromVersion": latest.upgrade_from_version if latest else None,
                "upgradeDirection": str(latest.direction) if latest and latest.direction else None,
                "history": [r.to_json() for r in pi.history],
            }
            if pi.revision > latest_rev.get(c.base_pack_name, ""):
                latest_rev[c.base_pack_name] = pi.revision
        conditions = [c.condition.to_json()] if c.condition is not None else (
            [cond.to_json() for cond in pi.conditions] if pi is not None else []
        )
        entry["conditions"] = conditions
        instances_by_base[c.base_pack_name].append(entry)
    errors_by_base: dict[str, list[dict[str, str]]] = defaultdict(list)
    for err in plan.errors:
        errors_by_base[err.pack].append(err.to_json())
    out = []
    for base in sorted(set(packs_by_base) | set(instances_by_base) | set(errors_by_base)):
        packs = sorted(packs_by_base.get(base, []), key=lambda e: str(e["name"]))
        rev = latest_rev.get(base) or (str(packs[-1]["provenance"]["commit"]) if packs else revision)  # type: ignore[index]
        record: dict[str, object] = {
            "apiVersion": "gitopsd.dev/v1alpha1",
            "kind": "PackStatus",
            "basePackName": base,
            "sourceRevision": rev,
            "sourceBuildRef": source_ref.get(base, ""),
            "clusterPacks": packs,
            "instances": sorted(instances_by_base.get(base, []), key=lambda e: str(e["name"])),
        }
        if errors_by_base.get(base):
            record["errors"] = errors_by_base[base]
        text = yaml.dump(record, Dumper=_Dumper, sort_keys=True, allow_unicode=True)
        out.append((f"{STATUS_DIR}/{base}.yaml", text.encode("utf-8")))
    return out


def commit_message(plan: change.Plan, revision: str) -> str:
    writes = plan.writes
    lines = [f"gitopsd: status for {revision}", ""]
    for c in writes:
        where = f" on {c.cluster}" if c.cluster else ""
        lines.append(f"- {c.kind} {c.name}{where}: {c.action} ({c.reason})")
    if not writes:
        lines.append("- status refreshed")
    return "\n".join(lines) + "\n"
