"""The composition root: builds the ``Env`` of a command from its ``Settings``. ``settings`` (the one
reading of flags and environment), ``assemble`` (the whole Env of a pass, opened and closed once),
``compose`` (the embedded backends, Git sources, keys, status write-back), ``kube`` (the management
cluster and its Lease), ``delivery`` (the push-mode Deliverer). Nothing here imports ``gitopsd.cli``."""
