"""Resolve a PackBuild's ``targetClusters`` (names and label selectors) against ``clusters/``."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from gitopsd import errors
from gitopsd.model import spec


def resolve(build: spec.PackBuild, clusters: Mapping[str, spec.Cluster]) -> tuple[str, ...]:
    """Sorted cluster names the build targets; an unknown cluster name is an error naming the file."""
    found: set[str] = set()
    for index, target in enumerate(build.targets):
        if target.name is not None:
            if target.name not in clusters:
                known = ", ".join(sorted(clusters)) or "none"
                raise errors.SpecError(
                    f"field 'targetClusters[{index}]': cluster {target.name!r} is not defined in clusters/ "
                    f"(known: {known}); add clusters/{target.name}.yaml or fix the name",
                    path=build.path,
                    reason="UnknownCluster",
                )
            found.add(target.name)
        elif target.selector is not None:
            found.update(name for name, c in clusters.items() if target.selector.matches(c.labels))
    return shared(tuple(sorted(found)))


@functools.lru_cache(maxsize=4096)
def shared(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names``, or an equal tuple given before: the packs of a fleet mostly target the same
    clusters, and 10,000 packs then hold one tuple of cluster names, not 10,000 (with their strings)."""
    return names
