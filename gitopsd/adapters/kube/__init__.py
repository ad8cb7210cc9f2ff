"""The management cluster on Kubernetes: ClusterPacks and PackInstances as custom resources.

The twin of ``gitopsd.adapters.localstore`` for the in-cluster mode, on the ``kubernetes`` client.
Objects are the same shapes (``gitopsd.core.codec`` reads them back): ClusterPacks are
``infrastructureclusterpacks.infrastructure.ontai.dev`` (kind InfrastructureClusterPack) and
PackInstances ``packinstances.infrastructure.ontai.dev``, both namespaced, both labelled
``app.kubernetes.io/managed-by=gitopsd``; only objects with that label are observed.

One concern per module:

- ``connection``: the API client (``connect``), every request (``Requests``: counted, writes gated by
  leadership) and the translation of API errors into gitopsd's (``translate``);
- ``cache``: the watch cache (``Informer``), one per kind and namespace;
- ``objects``: what the cluster's objects say as model values (``present_instance``);
- ``writes``: the cluster writes the plan asks for, with conflict handling (``Writer``);
- ``events``: the core/v1 Events every write and failure records (``Events``);
- ``cluster``: ``KubeCluster``, the ``ports.Cluster`` made of these.

The conditions written (Ready / Reconciling / Stalled plus the plan's domain condition, each with
``observedGeneration``) are decided by ``gitopsd.core.conditions``; this adapter serialises them.
``gitopsd.adapters.lease`` elects the one replica that writes (``may_write``) and shards packs
(``owns``); ``gitopsd.wiring.kube`` builds this adapter from the command line.
"""

from kubernetes import client

from gitopsd.adapters.kube.cache import Informer
from gitopsd.adapters.kube.cluster import KubeCluster
from gitopsd.adapters.kube.connection import (
    API_VERSION,
    APPLY_PATCH,
    CLUSTER_PACKS,
    DELIVERY_FIELD_MANAGER,
    FIELD_MANAGER,
    GROUP,
    JSON,
    LIST_PAGE,
    MANAGED_BY,
    MERGE_PATCH,
    PACK_INSTANCES,
    RBAC_NEEDED,
    VERSION,
    Kind,
    Requests,
    connect,
    translate,
)
from gitopsd.adapters.kube.events import MAX_EVENT_MESSAGE, Events
from gitopsd.adapters.kube.objects import present_instance
from gitopsd.adapters.kube.writes import Writer, write_order

__all__ = [
    "API_VERSION",
    "APPLY_PATCH",
    "CLUSTER_PACKS",
    "DELIVERY_FIELD_MANAGER",
    "FIELD_MANAGER",
    "GROUP",
    "JSON",
    "LIST_PAGE",
    "MANAGED_BY",
    "MAX_EVENT_MESSAGE",
    "MERGE_PATCH",
    "PACK_INSTANCES",
    "RBAC_NEEDED",
    "VERSION",
    "Events",
    "Informer",
    "Kind",
    "KubeCluster",
    "Requests",
    "Writer",
    "client",
    "connect",
    "present_instance",
    "translate",
    "write_order",
]
