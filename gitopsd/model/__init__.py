"""Frozen, typed values that travel through the reconcile pass.

The modules here hold data only: no I/O, no clock, no library clients. ``spec`` holds the inputs
read from the config repo, ``pack`` the compiled ClusterPack and its artifact, ``instance`` the
per-cluster PackInstance with its install records, and ``change`` the plan (a ChangeSet as data).
"""
