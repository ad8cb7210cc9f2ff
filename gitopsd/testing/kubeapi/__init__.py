"""A Kubernetes API server emulator for tests: real HTTP on 127.0.0.1, no cluster needed.

gitopsd talks to Kubernetes through the ``kubernetes`` client and users check its work with
``kubectl``; neither can run against a real API server in this project's test environment. This
package serves the API surface gitopsd depends on, faithfully enough that the unmodified client and
kubectl work against it: discovery, built-in kinds and CRD-defined kinds, optimistic concurrency
with one global resourceVersion, ``/status`` subresources, JSON/merge/strategic patches,
server-side apply with managed fields and conflicts, finalizers, label/field selectors, paging,
watches with replay, bookmarks and 410 Gone, plus fault injection and a request log::

    from gitopsd.testing import kubeapi

    with kubeapi.Emulator() as emu:
        emu.write_kubeconfig(tmp_path / "kubeconfig")
        ...                                   # run the code under test against emu.url
        assert emu.request_counts()["apply packinstances"] == 1
        emu.faults.add(kubeapi.Conflict(), verb="write", times=3)   # a 409 storm

Run standalone with ``python -m gitopsd.testing.kubeapi --port 0 --kubeconfig FILE``.

Modules: ``emulator`` (the public object), ``handler`` (HTTP), ``operations`` (verb semantics),
``store`` (objects, revisions, history), ``managedfields`` (server-side apply), ``patches``,
``selectors``, ``schema`` (merge shapes, pruning, validation), ``kinds`` (per-kind behaviour),
``resources``/``discovery``/``tables`` (types and how they are presented), ``faults``,
``requestlog``, ``errors``.
"""

from gitopsd.testing.kubeapi.emulator import CONTEXT, DEFAULT_NAMESPACES, Emulator
from gitopsd.testing.kubeapi.faults import (
    Conflict,
    Delay,
    DropWatch,
    Fail,
    Faults,
    InternalError,
    Rule,
    ServiceUnavailable,
    TooManyRequests,
    WatchGone,
)
from gitopsd.testing.kubeapi.requestlog import RequestRecord
from gitopsd.testing.kubeapi.resources import ResourceType

__all__ = [
    "CONTEXT",
    "DEFAULT_NAMESPACES",
    "Conflict",
    "Delay",
    "DropWatch",
    "Emulator",
    "Fail",
    "Faults",
    "InternalError",
    "RequestRecord",
    "ResourceType",
    "Rule",
    "ServiceUnavailable",
    "TooManyRequests",
    "WatchGone",
]
