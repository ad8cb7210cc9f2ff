"""How gitopsd reaches each target cluster to deliver packs (push mode).

In order: a kubeconfig file named for the cluster on the command line (``NAME=PATH``), then
``DIR/<cluster>.kubeconfig`` of a kubeconfig folder, then the Secret that ``clusters/<name>.yaml``
names (``kubeconfig: {secretRef: {name, key}, context}``), read from gitopsd's namespace in the
management cluster. A cluster with none of these is records-only: its PackInstances are written
and nothing is delivered. The kubeconfig's text is never logged, recorded or returned in an error.
"""

from __future__ import annotations

import base64
import dataclasses
import pathlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import yaml

from gitopsd import errors
from gitopsd.delivery import target as target_mod
from gitopsd.model import spec

if TYPE_CHECKING:  # the kubernetes package takes a quarter of a second to import: only when a cluster is reached
    from kubernetes import client

SecretReader = Callable[[str, str, str], bytes | None]  # (namespace, name, key) -> value


@dataclasses.dataclass(frozen=True, slots=True)
class Where:
    """How one cluster is reached: a file, or a Secret (never the kubeconfig's text)."""

    cluster: str
    source: str  # "file PATH" / "secret NS/NAME[KEY]": for messages only
    context: str | None


class Reach:
    def __init__(self, *, files: Mapping[str, pathlib.Path] | None = None, folder: pathlib.Path | None = None,
                 secrets: SecretReader | None = None, timeout: float = target_mod.REQUEST_TIMEOUT) -> None:
        self.files = dict(files or {})
        self.folder = folder
        self.secrets = secrets
        self.timeout = timeout

    def where(self, cluster: spec.Cluster, namespace: str = "") -> Where | None:
        """How ``cluster`` is reached (its Secret in ``namespace``), or None when it is records-only."""
        if cluster.name in self.files:
            return Where(cluster.name, f"file {self.files[cluster.name]}", cluster.context)
        if self.folder is not None and (self.folder / f"{cluster.name}.kubeconfig").is_file():
            return Where(cluster.name, f"file {self.folder / f'{cluster.name}.kubeconfig'}", cluster.context)
        if cluster.kubeconfig_secret is not None and self.secrets is not None:
            name, key = cluster.kubeconfig_secret
            return Where(cluster.name, f"secret {namespace}/{name}[{key}]", cluster.context)
        return None

    def connect(self, cluster: spec.Cluster, namespace: str) -> target_mod.Target | None:
        """A client for ``cluster``; None when it is records-only. A kubeconfig that cannot be read
        or used is a ``ConfigError`` naming where it came from (not what it says)."""
        where = self.where(cluster, namespace)
        if where is None:
            return None
        if where.source.startswith("file "):
            path = pathlib.Path(where.source[5:])
            try:
                text = path.read_bytes()
            except OSError as err:
                raise errors.ConfigError(f"cluster {cluster.name}: cannot read kubeconfig {path}: {err.strerror}",
                                         reason="KubeconfigInvalid") from err
        else:
            assert cluster.kubeconfig_secret is not None and self.secrets is not None
            name, key = cluster.kubeconfig_secret
            found = self.secrets(namespace, name, key)
            if found is None:
                raise errors.ConfigError(
                    f"cluster {cluster.name}: Secret {namespace}/{name} has no key {key!r} (clusters/{cluster.name}.yaml "
                    "kubeconfig.secretRef); create it with the cluster's kubeconfig",
                    reason="KubeconfigSecretMissing")
            text = found
        return target_mod.Target(cluster.name, _api(text, where), timeout=self.timeout)


def _api(text: bytes, where: Where) -> client.ApiClient:
    from kubernetes import client, config  # noqa: PLC0415 - imported on first use (see TYPE_CHECKING above)

    try:
        loaded = yaml.safe_load(text)
        if not isinstance(loaded, dict):
            raise ValueError("not a kubeconfig mapping")
        configuration = client.Configuration()
        config.load_kube_config_from_dict(loaded, context=where.context, client_configuration=configuration,
                                          persist_config=False)
    except (config.ConfigException, yaml.YAMLError, ValueError, TypeError, KeyError) as err:
        what = f" context {where.context!r}" if where.context else ""
        raise errors.ConfigError(f"cluster {where.cluster}: the kubeconfig from {where.source}{what} cannot be used: "
                                 f"{type(err).__name__}", reason="KubeconfigInvalid") from err
    configuration.retries = 0
    return client.ApiClient(configuration)


def secret_reader(api: client.ApiClient) -> SecretReader:
    """Read one key of a Secret in the management cluster (get on secrets in gitopsd's namespace)."""
    from kubernetes import client  # noqa: PLC0415 - imported on first use (see TYPE_CHECKING above)

    def read(namespace: str, name: str, key: str) -> bytes | None:
        # the core API's client is built on the first read: a pass that reads no Secret does not load it
        core = client.CoreV1Api(api)
        try:
            secret = core.read_namespaced_secret(name, namespace, _request_timeout=target_mod.REQUEST_TIMEOUT)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise errors.ConfigError(f"cannot read Secret {namespace}/{name}: {err.status} {err.reason}",
                                     reason="ClusterUnauthorized" if err.status in (401, 403) else "SecretUnreadable") from err
        value = (secret.data or {}).get(key)
        return None if value is None else base64.b64decode(value)

    return read
