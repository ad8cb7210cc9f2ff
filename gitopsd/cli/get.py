"""``gitopsd get packs|instances|events``: the local store's ClusterPacks, PackInstances and events.

``gitopsd.cli.main`` registers it with ``cli_get.add_parser(sub)``. Reads only: a state dir that
cannot be written is opened read-only.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

from gitopsd import errors, output
from gitopsd.adapters import localstore
from gitopsd.cli import flags
from gitopsd.model import pack
from gitopsd.wiring import compose as wiring
from gitopsd.wiring import settings as wiring_settings

EXIT_OK = 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "get", help="list ClusterPacks or PackInstances of the local store",
        description="list ClusterPacks (packs) or PackInstances (instances) of the local store")
    p.add_argument("what", choices=("packs", "instances", "events"), help="what to list")
    p.add_argument("repo", metavar="REPO", nargs="?", help="config repo (to find its default state dir)")
    flags.common(p, repo=False)
    p.set_defaults(func=cmd_get)
    return p


def cmd_get(settings: wiring_settings.Settings) -> int:
    state_dir = wiring.state_dir(settings)
    if not (state_dir / "store.db").exists():
        raise errors.ConfigError(f"no local store in {state_dir}; run 'gitopsd reconcile REPO' first", reason="NoStore")
    store = localstore.LocalStore(state_dir / "store.db", read_only=not wiring.writable(state_dir))
    items: list[dict[str, Any]]  # the stored objects as raw JSON, read for display only
    try:
        if settings.what == "events":
            items = cast("list[dict[str, Any]]", store.events(200))
        else:
            kind = pack.CLUSTER_PACK_KIND if settings.what == "packs" else "PackInstance"
            items = cast("list[dict[str, Any]]", store.list_objects(kind))
    finally:
        store.close()
    if settings.output != "table":
        output.dump({"apiVersion": "v1", "kind": "List", "items": items}, settings.output)
        return EXIT_OK
    if settings.what == "packs":
        rows = [
            [
                str(o["metadata"]["name"]),
                str(o["spec"]["version"]),
                "yes" if o.get("status", {}).get("signed") else "no",
                output.short(str(o["spec"]["registryRef"].get("digest", ""))),
                ",".join(o["spec"].get("targetClusters", [])),
                ",".join(s["name"] for s in o["spec"].get("executionOrder", [])),
            ]
            for o in items
        ]
        output.table(rows, ["NAME", "VERSION", "SIGNED", "DIGEST", "TARGETS", "STAGES"])
    elif settings.what == "instances":
        rows = []
        for o in items:
            st = o.get("status") or {}
            ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), None)
            shipped = st.get("delivery") or {}
            drift = shipped.get("drift") or {}
            rows.append([
                str(o["metadata"]["name"]),
                str(o["spec"]["cluster"]),
                str(st.get("version", "")),
                str(shipped.get("version", "")) if shipped.get("result") == "Delivered" else "",
                str(shipped.get("result", "records only")),
                (f"{len(drift['drifted'])} drifted" if drift.get("drifted") else "none") if shipped else "",
                str(st.get("state", "")),
                str(st.get("upgradeDirection") or ""),
                str(ready["status"]) if ready else "",
                str(o["metadata"]["resourceVersion"]),
            ])
        output.table(rows, ["NAME", "CLUSTER", "WANTED", "DELIVERED", "DELIVERY", "DRIFT", "STATE", "DIRECTION", "READY", "RV"])
    else:
        output.table([[str(e["time"]), str(e["type"]), f"{e['kind']}/{e['name']}", str(e["reason"]), str(e["message"])]
                      for e in items],
                     ["TIME", "TYPE", "OBJECT", "REASON", "MESSAGE"])
    return EXIT_OK
