"""The composition root: builds the ``Env`` of a command from its options. ``compose`` (the
embedded backends, Git sources, keys, status write-back), ``kube`` (the management cluster and its
Lease), ``delivery`` (the push-mode Deliverer)."""
