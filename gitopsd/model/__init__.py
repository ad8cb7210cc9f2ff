"""Frozen, typed values that travel through the reconcile pass.

The modules here hold data only: no I/O, no clock, no library clients. ``spec`` holds the inputs
read from the config repo, ``pack`` the compiled ClusterPack and its artifact, ``instance`` the
per-cluster PackInstance with its install records, ``change`` the plan (a ChangeSet as data),
``delivery`` what delivery did on a target cluster, and ``conditions`` the names of conditions
(their types, statuses and reasons; ``gitopsd.core.conditions`` decides which an object has).
"""
