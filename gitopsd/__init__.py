"""gitopsd: a GitOps reconciler that compiles PackBuilds into signed, content-addressed ClusterPacks."""

__version__ = "0.1.0"
