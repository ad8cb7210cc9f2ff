"""What the cluster's objects say, as model values: a PackInstance as of its last completed write.

A PackInstance write counts as done only when its status carries ``observedGeneration`` equal to
``metadata.generation``: an instance whose spec write landed but whose status write did not is
presented as it was at its last completed write (or as never installed), so the plan makes the same
write again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import structlog

from gitopsd.core import codec, conditions
from gitopsd.model import instance

log = structlog.get_logger()


def present_instance(obj: Mapping[str, Any]) -> instance.PackInstance:
    """A PackInstance as of its last completed write (see the module docstring)."""
    status = obj.get("status") or {}
    try:
        pi = codec.pack_instance_from_object(obj)
    except (KeyError, TypeError, ValueError) as err:
        log.warning("unreadable PackInstance", name=obj["metadata"]["name"], error=repr(err))
        return _never_installed(obj)
    if not status.get("state"):
        return dataclasses.replace(pi, state=instance.InstallState.UNINSTALLED, history=(), conditions=())
    generation = (obj.get("metadata") or {}).get("generation")
    observed = conditions.observed_generation(status)
    if isinstance(generation, int) and observed is not None and observed < generation:
        last = pi.history[-1] if pi.history else None
        if last is None:
            return dataclasses.replace(pi, state=instance.InstallState.UNINSTALLED)
        return dataclasses.replace(
            pi,
            version=str(status.get("version") or last.pack_version),
            cluster_pack=last.cluster_pack,
            manifest_digest=last.artifact.rpartition("@")[2],
            checksum="",  # unknown: the plan writes the instance again
        )
    return pi


def _never_installed(obj: Mapping[str, Any]) -> instance.PackInstance:
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    return instance.PackInstance(
        name=meta["name"], namespace=meta.get("namespace", ""), base_pack_name=str(spec.get("basePackName", "")),
        cluster=str(spec.get("cluster", "")), cluster_pack="", version="", manifest_digest="", checksum="", priority=0,
        source_build_ref="", revision="", state=instance.InstallState.UNINSTALLED,
        uid=meta.get("uid"), resource_version=meta.get("resourceVersion"),
    )


def base_of(obj: Mapping[str, Any]) -> str:
    """The basePackName of a ClusterPack or PackInstance object (what sharding decides on)."""
    spec = obj.get("spec") or {}
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return str(spec.get("basePackName") or labels.get("ontai.dev/base-pack") or "")

