"""Command-line flags shared by ``reconcile``, ``dry-run``, ``diff``, ``run``, ``plan`` and ``verify``.

``gitopsd.cli.main`` and the other command modules build their parsers from here, so a flag means the
same thing everywhere; ``gitopsd.wiring.settings.Settings.from_args`` reads what they parsed. Secrets
are never flag values: flags name files or environment variables.
"""

from __future__ import annotations

import argparse
import re

from gitopsd import errors
from gitopsd.wiring import settings as wiring_settings


def common(p: argparse.ArgumentParser, *, repo: bool = True, fmt_default: str = "table", output: bool = True,
           log_level: str = "warning") -> None:
    if repo:
        p.add_argument("repo", metavar="REPO", help="config repo: a folder (a Git work tree is read at HEAD), a bare "
                       "repository path (/path/repo.git), or a file://, ssh:// or https:// URL")
    p.add_argument("--state-dir", metavar="DIR", help="where the embedded store, OCI layout, cache and keys live "
                   "(default: $XDG_STATE_HOME/gitopsd/<repo>-<hash>, i.e. ~/.local/state/gitopsd/...)")
    if output:
        p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default=fmt_default,
                       help="output format (default: %(default)s)")
    p.add_argument("--log-level", default=log_level, choices=("debug", "info", "warning", "error"),
                   help="log level on stderr (default: %(default)s)")
    p.add_argument("--log-format", default="auto", choices=("auto", "json", "console"),
                   help="log format (default: JSON unless stderr is a TTY)")


def _workers(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return int(text)


def render(p: argparse.ArgumentParser) -> None:
    """How many renderer child processes the compile step runs at once (for reconcile, dry-run, diff, run)."""
    p.add_argument("--render-workers", type=_workers, metavar="N", help="run up to N kustomize/helm renders at once "
                   "while raw packs compile; 1 renders one pack after another; results are the same either way "
                   f"(default: ${wiring_settings.RENDER_WORKERS_ENV}, else one per CPU)")


_DURATION = re.compile(r"^\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
DEFAULT_RENDER_WAIT = 5.0  # seconds a pass that applies waits for one render before it leaves it running


def parse_duration(text: str) -> float:
    """``500ms``, ``30s``, ``10m``, ``1h`` or plain seconds, as seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use e.g. 500ms, 30s, 10m, 1h")
    return float(match["value"]) * _UNITS[match["unit"]]


def render_wait(p: argparse.ArgumentParser) -> None:
    """How long a pass that applies (reconcile, run) waits for one slow render before going on without it."""
    p.add_argument("--render-wait", type=parse_duration, default=DEFAULT_RENDER_WAIT, metavar="DURATION",
                   help="a kustomize/helm render still running this long after it started is left running: the "
                   "other packs are applied, that pack keeps what it runs (RenderPending) and a later pass applies "
                   "it when the render ends (default: 5s)")


def full(p: argparse.ArgumentParser, *, daemon: bool = False) -> None:
    """``--full`` (reconcile, run): every pass plans every pack (``Env.full_plan``), never only what changed."""
    if daemon:
        what = ("every pass plans every pack against everything the store holds, as a --resync-interval pass does, "
                "instead of re-planning only the packs whose inputs changed or that the store's change feed names "
                "(drift checks and retries still wait for the resync)")
    else:
        what = ("every pass of this command plans every pack against everything the store holds (the first pass of "
                "a new process already does; --full also covers the pass that applies renders left running)")
    p.add_argument("--full", action="store_true",
                   help=f"{what}. Use it to rule out the incremental plan: after editing the store by hand, or when a "
                   "plan looks wrong. The plan is the same either way; a full one costs more time per pass")


def signing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--signing-key", metavar="PATH", help="Ed25519 private key (OpenSSH or PKCS#8 PEM, or a Secret folder) "
                   "that signs ClusterPacks (default: a key generated in the state dir)")
    p.add_argument("--trusted-keys", metavar="PATH", help="file or folder of trusted public keys (OpenSSH, allowed_signers "
                   "or PEM); delivery needs a signature by one of them (default: the signing key)")
    p.add_argument("--registry-url", metavar="HOST[:PORT]/PATH", help="registry URL recorded in ClusterPacks "
                   "(default: gitopsd.yaml 'registry', else oci-layout://packs)")


def git(p: argparse.ArgumentParser) -> None:
    """The Git source and status write-back flags (shared with ``gitopsd run``)."""
    g = p.add_argument_group("git", "for a Git remote REPO (bare repository path or URL); credentials never on the command line")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--branch", metavar="NAME", help="branch to follow (default: the remote's HEAD branch)")
    which.add_argument("--tag", metavar="NAME", help="tag to read instead of a branch (status is then not written)")
    creds = g.add_mutually_exclusive_group()
    creds.add_argument("--git-credentials-file", metavar="PATH", help="https: file holding user:token or a token")
    creds.add_argument("--git-credentials-env", metavar="VAR", help="https: environment variable holding user:token or a token")
    g.add_argument("--git-ssh-key", metavar="PATH", help="ssh: private key file (default: ssh-agent)")
    g.add_argument("--verify-commits", metavar="ALLOWED_SIGNERS", help="refuse a revision whose commit has no SSH "
                   "signature by a key in this allowed_signers file (fail closed: nothing is applied)")
    g.add_argument("--verify-commits-gpg", metavar="KEYRING", help="refuse a revision whose commit has no GPG signature "
                   "by a key in this keyring file (exported or .kbx; armored keys are imported)")
    g.add_argument("--git-author-name", default="gitopsd", metavar="NAME", help="author of status commits (default: %(default)s)")
    g.add_argument("--git-author-email", default="gitopsd@localhost", metavar="EMAIL",
                   help="email of status commits, also the principal in the allowed_signers file (default: %(default)s)")
    status = g.add_mutually_exclusive_group()
    status.add_argument("--no-status", dest="status", action="store_false", default=None,
                        help="reconcile: do not commit status to a Git remote")
    status.add_argument("--write-status", dest="status", action="store_true",
                        help="reconcile: commit status to the checked-out branch of a folder REPO (a Git work tree)")
    g.add_argument("--as-git-remote", action="store_true", help="REPO is a plain folder: commit it to a local bare "
                   "remote <state-dir>/demo-remote.git (again when its files change) and reconcile from that remote")


def registry(p: argparse.ArgumentParser) -> None:
    """The OCI registry flags: without --registry, artifacts go to the OCI layout in the state dir."""
    g = p.add_argument_group("registry", "publish artifacts to an OCI registry instead of the local OCI layout; "
                             "credentials never on the command line")
    g.add_argument("--registry", metavar="HOST[:PORT]/PATH",
                   help="push each pack's artifact to HOST[:PORT]/PATH/<basePackName>:<version> "
                   "and record that URL in ClusterPacks")
    g.add_argument("--registry-ca", metavar="PATH", help="PEM bundle of CAs that sign the registry's TLS certificate")
    g.add_argument("--registry-insecure", action="store_true", help="plain http (allowed for loopback hosts only)")
    g.add_argument("--registry-config", metavar="PATH", help="docker config.json with credentials "
                   "(default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json)")
    g.add_argument("--registry-username-file", metavar="PATH", help="file holding the registry user name")
    g.add_argument("--registry-password-file", metavar="PATH", help="file holding the registry password or token")


def require_signing_key(settings: wiring_settings.Settings, *, writes: bool, kube: bool) -> None:
    """Writing to a shared registry or cluster needs a real key: the key made in a local state dir
    would differ per machine and per replica, and its signatures would not verify elsewhere."""
    if not writes or settings.signing_key:
        return
    where = "a Kubernetes cluster" if kube else ("an OCI registry (--registry)" if settings.registry.url else None)
    if where is not None:
        raise errors.ConfigError(
            f"writing to {where} needs --signing-key PATH (an Ed25519 key, e.g. from 'gitopsd keygen' or a mounted "
            "Secret): signatures must verify on every replica and for every tenant",
            reason="NoSigningKey",
        )


def delivery(p: argparse.ArgumentParser) -> None:
    """How gitopsd reaches target clusters to deliver packs (push mode)."""
    g = p.add_argument_group("delivery", "push packs into target clusters; a cluster with no kubeconfig here or in "
                             "clusters/<name>.yaml (kubeconfig.secretRef) is records-only")
    g.add_argument("--kubeconfig-dir", metavar="DIR", help="folder of kubeconfigs named <cluster>.kubeconfig")
    g.add_argument("--cluster-kubeconfig", metavar="NAME=PATH", action="append", default=[],
                   help="the kubeconfig of cluster NAME (repeatable; before --kubeconfig-dir)")
    g.add_argument("--delivery-workers", type=_workers, metavar="N", default=4,
                   help="clusters delivered at once (default: %(default)s)")


def kube(p: argparse.ArgumentParser) -> None:
    """The Kubernetes flags, in their own help group (``Settings.kube``; ``gitopsd.wiring.kube`` uses them)."""
    group = p.add_argument_group(
        "kubernetes", "apply to a management cluster instead of the embedded store (any of these turns it on)")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config "
                       "when only --context is given)")
    where.add_argument("--in-cluster", action="store_true", default=False,
                       help="use the Pod's ServiceAccount (the Deployment in deploy/ does)")
    group.add_argument("--context", metavar="NAME", help="kubeconfig context (default: the current context)")
    group.add_argument("--shard", type=_shard, metavar="I/N", help="own only the packs whose sha256(basePackName) mod N "
                       "is I; each shard elects its own leader (Lease gitopsd-shard-I-of-N)")
    group.add_argument("--lease-namespace", metavar="NS", default=None,
                       help=f"namespace of the leader Lease (default: $POD_NAMESPACE, else "
                       f"{wiring_settings.DEFAULT_LEASE_NAMESPACE})")
    group.add_argument("--no-leader-election", dest="leader_election", action="store_false", default=True,
                       help="write without holding the Lease (only when a single gitopsd writes to the cluster)")


def _shard(text: str) -> tuple[int, int]:
    from gitopsd.adapters import lease  # noqa: PLC0415 - the Kubernetes client costs ~0.2 s of every command

    try:
        return lease.parse_shard(text)
    except errors.ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
