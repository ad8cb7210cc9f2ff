"""Delivery: from a PackInstance to objects running on its target cluster (design.md, Delivery).

``engine`` verifies and applies a ClusterPack's artifact stage by stage, waits for health, prunes
and checks drift; ``target`` is the thin client it does so with; ``reach`` finds how to reach each
cluster (a kubeconfig folder or file locally, a kubeconfig Secret in a management cluster).
The pure rules live in ``gitopsd.core.delivery`` and ``gitopsd.core.health``.
"""
