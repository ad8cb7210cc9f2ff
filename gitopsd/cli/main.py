"""The ``gitopsd`` command: argument parsing, wiring and exit codes. No decisions are made here.

Exit codes (also in ``--help``):
  0  success; for ``diff``: in sync
  1  for ``diff``: there are changes; for ``reconcile``/``dry-run``/``verify``: some pack failed,
     is blocked or did not verify
  2  error: bad arguments, unreadable repo, a broken gitopsd.yaml, a backend failure (a full disk,
     a read-only or locked state dir, a damaged store.db), one line on stderr
  141  the output pipe closed early (``gitopsd get packs | head``): output stops quietly
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, cast

import structlog

from gitopsd import __version__, errors, logs, output, reconcile
from gitopsd.adapters import keys, localstore, statelock
from gitopsd.cli import flags
from gitopsd.cli import plan as cli_plan
from gitopsd.cli import run as cli_run
from gitopsd.core import delivery as delivery_core
from gitopsd.core import signing, yamlload
from gitopsd.core import status as status_core
from gitopsd.model import delivery, instance, pack
from gitopsd.wiring import compose as wiring
from gitopsd.wiring import delivery as wiring_delivery
from gitopsd.wiring import kube as wiring_kube

log = structlog.get_logger()

EXIT_OK, EXIT_CHANGES, EXIT_ERROR = 0, 1, 2
EXIT_PIPE = 141  # the output pipe closed early (128 + SIGPIPE, as a shell reports it)

EPILOG = """\
exit codes:
  0  success (diff: in sync)
  1  diff: changes pending or a pack failed; reconcile/dry-run: a pack failed or is blocked, or a delivery failed;
     verify: a pack failed
  2  error (bad arguments, unreadable repo, invalid gitopsd.yaml, backend failure: full disk,
     read-only or locked state dir, damaged store.db); diff --live: also a target cluster that could not be
     reached or read (reported on its own line; the other clusters are still compared and shown)
  141  the output pipe closed early (e.g. piped into head)

examples:
  gitopsd reconcile examples-repo            compile, sign, publish and apply on the embedded default
  gitopsd reconcile examples-repo --as-git-remote
                                             the same from a local bare Git remote made of the folder,
                                             with a signed status commit pushed back to it
  gitopsd reconcile https://git.example.com/org/config.git --git-credentials-file token --signing-key key
                                             a Git remote: status commits are signed and pushed (never forced)
  gitopsd diff examples-repo -o json         what would change, as one JSON document
  gitopsd diff examples-repo --live --kubeconfig-dir kubeconfigs/
                                             also what each target cluster holds against it (reads only)
  gitopsd get instances examples-repo        PackInstances in the local store
"""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="gitopsd",
        description="GitOps reconciler for packs: compiles PackBuilds from a Git config repo into signed, "
        "content-addressed ClusterPacks and applies them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"gitopsd {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    for name, help_text in (
        ("reconcile", "one pass with writes: compile, sign, publish, apply"),
        ("dry-run", "one pass that writes nothing: shows the plan and the desired ClusterPacks"),
        ("diff", "what would change; exit 0 = in sync, 1 = changes or a failed pack, 2 = error"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        flags.common(p)
        flags.signing(p)
        flags.registry(p)
        flags.git(p)
        flags.render(p)
        flags.delivery(p)
        wiring_kube.add_flags(p)
        if name == "reconcile":
            flags.render_wait(p)
        p.add_argument("-v", "--verbose", action="store_true", help="also list unchanged objects")
        if name == "diff":
            cli_plan.add_live_flag(p)
        p.set_defaults(func=cmd_pass, mode=name)

    p = sub.add_parser("get", help="list ClusterPacks or PackInstances of the local store",
                       description="list ClusterPacks (packs) or PackInstances (instances) of the local store")
    p.add_argument("what", choices=("packs", "instances", "events"), help="what to list")
    p.add_argument("repo", metavar="REPO", nargs="?", help="config repo (to find its default state dir)")
    flags.common(p, repo=False)
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("verify", help="check every stored ClusterPack's signature and artifact; exit 1 on any failure",
                       description="check every stored ClusterPack: signature against the trusted keys, artifact "
                       "blobs against the recorded digests, and the config repo's status records against them; "
                       "one line per pack and per record; exit 1 on any failure")
    p.add_argument("repo", metavar="REPO", nargs="?", help="config repo: finds the default state dir, and its "
                   ".gitopsd/status records are checked too")
    flags.common(p, repo=False)
    p.add_argument("--trusted-keys", metavar="PATH", help="trusted public keys (default: the state dir's signing key)")
    p.add_argument("--namespace", default="seam-system", help="namespace of the ClusterPacks (default: %(default)s)")
    flags.registry(p)
    flags.git(p)
    wiring_kube.add_flags(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("keygen", help="make an Ed25519 signing key pair; print its allowed_signers line",
                       description="write DIR/signing.key (OpenSSH, mode 0600) and DIR/signing.key.pub, and print the "
                       "allowed_signers line (for git verify-commit) and the public key")
    p.add_argument("--dir", default=".", help="folder for the key files (default: current folder)")
    p.add_argument("--principal", default="gitopsd@localhost", help="identity in the allowed_signers line")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    p.set_defaults(func=cmd_keygen)

    cli_run.add_parser(sub)
    cli_plan.add_parser(sub)
    return top


def _state_dir(args: argparse.Namespace) -> pathlib.Path:
    if args.state_dir:
        return pathlib.Path(args.state_dir)
    repo = getattr(args, "repo", None)
    if not repo:
        raise errors.ConfigError("give the config repo (REPO) or --state-dir to find the local store", reason="Usage")
    return wiring.default_state_dir(repo)


def _repo_path(args: argparse.Namespace) -> pathlib.Path:
    repo = pathlib.Path(args.repo)
    if not repo.is_dir():
        raise errors.ConfigError(f"config repo {args.repo} is not a folder; give the path of a config repo",
                                 reason="RepoNotFound")
    return repo


def cmd_pass(args: argparse.Namespace) -> int:
    repo = args.repo
    wiring.repo_kind(repo)  # a missing folder or a URL holding credentials stops here, before the state dir is made
    state_dir = _state_dir(args)
    dry_run = args.mode != "reconcile"
    # One writer per state dir: held from before its first write (the demo remote, the key) to the end.
    held = statelock.acquire(state_dir) if not dry_run or args.as_git_remote else None
    try:
        return _pass(args, repo, state_dir, dry_run)
    finally:
        if held is not None:
            held.release()


def _pass(args: argparse.Namespace, repo: str, state_dir: pathlib.Path, dry_run: bool) -> int:
    if args.as_git_remote:
        if wiring.repo_kind(repo) is not wiring.RepoKind.FOLDER:
            raise errors.ConfigError(f"--as-git-remote takes a plain folder; {repo} already is a Git remote", reason="Usage")
        repo = str(wiring.ensure_demo_remote(_repo_path(args), state_dir))
    kind = wiring.repo_kind(repo)
    if kind is not wiring.RepoKind.URL:
        wiring.check_state_dir(state_dir, pathlib.Path(repo))
    flags.require_signing_key(args, writes=not dry_run, kube=wiring_kube.options(args) is not None)
    local = wiring.open_local(state_dir, read_only=dry_run and not wiring.writable(state_dir))
    try:
        wired = wiring.build_env(repo, local, dry_run=dry_run, signing_key=args.signing_key, trusted_keys=args.trusted_keys,
                                 registry_url=args.registry_url, git=flags.git_options(args),
                                 registry=flags.registry_options(args), render_workers=flags.render_workers(args))
        wired.env.progress = output.progress(sys.stderr)
        wired.env.render_wait = getattr(args, "render_wait", None)  # reconcile only: dry-run and diff wait for every render
        with wiring_kube.use(args, wired.env) as env:
            wiring_delivery.use(args, env, secrets=wiring_kube.secret_reader(env))
            state = reconcile.run_applying_slow_renders_last(env)
            live = cli_plan.live_diff(args, env, state, local, secrets=wiring_kube.secret_reader(env))
    finally:
        local.close()
    assert state.summary is not None and state.plan is not None and state.tree is not None
    summary = state.summary
    log.info("pass finished", mode=args.mode, **summary.to_json(notes=False),
             seconds=round(state.timings["total"], 3))
    if args.output == "table":
        printer = output.Printer()
        verb = {"reconcile": "Reconciled", "dry-run": "Dry run of", "diff": "Diff of"}[args.mode]
        header = f"{verb} {args.repo} ({state.tree.snapshot.description}) at {state.revision}"
        output.print_summary(printer, summary, header=header, verbose=args.verbose)
        for line in delivery_lines(state):
            printer.line(line)
        cli_plan.print_live(live, printer)
        printer.line(f"state dir {state_dir}; {state.timings['total']:.2f}s")
        for line in status_lines(wired, state):
            printer.line(line)
    else:
        output.dump({**pass_document(state, args.mode, state_dir), **cli_plan.live_document(live)}, args.output)
    if args.mode == "diff":  # a failed pack exits 1 as with reconcile; 2 is for errors of the run itself
        return cli_plan.live_exit(live, EXIT_CHANGES if summary.has_changes or summary.errors else EXIT_OK)
    delivered = all(result.result in (delivery.Result.DELIVERED, delivery.Result.PRUNED) for _, result in state.deliveries)
    return EXIT_OK if summary.ready and delivered else EXIT_CHANGES


def delivery_lines(state: reconcile.PassState) -> list[str]:
    """What delivery did this pass: a count by result, then one line per delivery that did not succeed."""
    if not state.deliveries and not state.records_only:
        return []
    counts: dict[str, int] = {}
    for job, result in state.deliveries:
        word = "drift checked" if job.action is delivery_core.Action.DRIFT and result.ready else str(result.result).lower()
        counts[word] = counts.get(word, 0) + 1
    parts = [f"{n} {word}" for word, n in sorted(counts.items())] or ["nothing to deliver"]
    lines = [f"delivery: {', '.join(parts)}" + (f"; records only (no kubeconfig): {', '.join(state.records_only)}"
                                                 if state.records_only else "")]
    for job, result in sorted(state.deliveries, key=lambda d: (d[0].cluster, d[0].instance)):
        if result.result not in (delivery.Result.DELIVERED, delivery.Result.PRUNED) or result.drifted:
            lines.append(f"  {job.cluster:<12} {job.instance} {job.version}: {result.result}: {result.message}")
    return lines


def status_lines(wired: wiring.Wired, state: reconcile.PassState) -> list[str]:
    """The closing lines about status write-back: the commit pushed (or none) and how to verify it."""
    if wired.writer is None:
        return [] if wired.kind is wiring.RepoKind.FOLDER else [f"status: not written ({wired.status_off})"]
    if state.status_error is not None:
        return [f"status: NOT written: {state.status_error} (the next pass retries)"]
    outcome = wired.writer.last
    where = wired.writer.branch.display
    if state.status_commit is None or outcome is None:
        tip = f" at {outcome.parent[:12]}" if outcome is not None else ""
        return [f"status: no status change ({where}{tip})"]
    tries = "" if outcome.attempts == 1 else f", {outcome.attempts} attempts"
    return [
        f"status: commit {state.status_commit} pushed to {where} ({outcome.seconds:.2f}s{tries})",
        f"verify: {wired.verify_command(state.status_commit)}",
    ]


def pass_document(state: reconcile.PassState, mode: str, state_dir: pathlib.Path) -> dict[str, object]:
    assert state.plan is not None and state.summary is not None and state.tree is not None
    return {
        "apiVersion": "gitopsd.dev/v1alpha1",
        "kind": "ReconcileResult" if mode == "reconcile" else "Plan",
        "mode": mode,
        "revision": state.revision,
        "source": state.tree.snapshot.description,
        "stateDir": str(state_dir),
        "summary": state.summary.to_json(),
        "changes": [c.to_json() for c in state.plan.changes],
        "errors": [e.to_json() for e in state.plan.errors],
        "clusterPacks": [r.compiled.cluster_pack.to_object() for r in state.compiled],
        "statusCommit": state.status_commit,
        "deliveries": [{"instance": job.instance, "action": str(job.action), **result.to_json()}
                       for job, result in state.deliveries],
        "recordsOnly": state.records_only,
        "timings": {k: round(v, 4) for k, v in state.timings.items()},
    }


def cmd_get(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    if not (state_dir / "store.db").exists():
        raise errors.ConfigError(f"no local store in {state_dir}; run 'gitopsd reconcile REPO' first", reason="NoStore")
    store = localstore.LocalStore(state_dir / "store.db", read_only=not wiring.writable(state_dir))
    items: list[dict[str, Any]]  # the stored objects as raw JSON, read for display only
    try:
        if args.what == "events":
            items = cast("list[dict[str, Any]]", store.events(200))
        else:
            kind = pack.CLUSTER_PACK_KIND if args.what == "packs" else "PackInstance"
            items = cast("list[dict[str, Any]]", store.list_objects(kind))
    finally:
        store.close()
    if args.output != "table":
        output.dump({"apiVersion": "v1", "kind": "List", "items": items}, args.output)
        return EXIT_OK
    if args.what == "packs":
        rows = [
            [
                str(o["metadata"]["name"]),
                str(o["spec"]["version"]),
                "yes" if o.get("status", {}).get("signed") else "no",
                output.short(str(o["spec"]["registryRef"].get("digest", ""))),
                ",".join(o["spec"].get("targetClusters", [])),
                ",".join(s["name"] for s in o["spec"].get("executionOrder", [])),
            ]
            for o in items
        ]
        output.table(rows, ["NAME", "VERSION", "SIGNED", "DIGEST", "TARGETS", "STAGES"])
    elif args.what == "instances":
        rows = []
        for o in items:
            st = o.get("status") or {}
            ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), None)
            shipped = st.get("delivery") or {}
            drift = shipped.get("drift") or {}
            rows.append([
                str(o["metadata"]["name"]),
                str(o["spec"]["cluster"]),
                str(st.get("version", "")),
                str(shipped.get("version", "")) if shipped.get("result") == "Delivered" else "",
                str(shipped.get("result", "records only")),
                (f"{len(drift['drifted'])} drifted" if drift.get("drifted") else "none") if shipped else "",
                str(st.get("state", "")),
                str(st.get("upgradeDirection") or ""),
                str(ready["status"]) if ready else "",
                str(o["metadata"]["resourceVersion"]),
            ])
        output.table(rows, ["NAME", "CLUSTER", "WANTED", "DELIVERED", "DELIVERY", "DRIFT", "STATE", "DIRECTION", "READY", "RV"])
    else:
        output.table([[str(e["time"]), str(e["type"]), f"{e['kind']}/{e['name']}", str(e["reason"]), str(e["message"])]
                      for e in items],
                     ["TIME", "TYPE", "OBJECT", "REASON", "MESSAGE"])
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    kube_options = wiring_kube.options(args)
    if kube_options is None and not (state_dir / "store.db").exists():
        raise errors.ConfigError(f"no local store in {state_dir}; run 'gitopsd reconcile REPO' first", reason="NoStore")
    _, verifier = wiring.signing(state_dir, None, args.trusted_keys, create=False)
    if verifier is None:
        if kube_options is None:
            store = localstore.LocalStore(state_dir / "store.db", read_only=not wiring.writable(state_dir))
            try:
                signed = store.signed_packs()
            finally:
                store.close()
            if signed:
                raise errors.ConfigError(
                    f"{state_dir / 'keys' / 'signing.key'} is missing, but the local store holds {signed} signed "
                    "ClusterPack(s): restore the key file, or pass --trusted-keys with its public key",
                    reason="SigningKeyMissing")
        raise errors.ConfigError("no trusted keys: pass --trusted-keys or reconcile once to create the local key",
                                 reason="NoTrustedKeys")
    registry_options = flags.registry_options(args)
    local = wiring.open_local(state_dir, read_only=not wiring.writable(state_dir))
    failures = 0
    results = []
    try:
        artifacts = wiring.open_registry(registry_options) if registry_options else local.layout
        if kube_options is None:
            observed = local.store.observe(args.namespace)
        else:
            handle = wiring_kube.open_kube(kube_options, daemon=False, writes=False)
            try:
                observed = handle.cluster.observe(args.namespace)
            finally:
                handle.close()
        for name, found in sorted(observed.packs.items()):
            problems = verify_pack(found, verifier, artifacts)
            failures += bool(problems)
            results.append({"name": name, "ok": not problems, "problems": problems})
        if args.repo:
            records = wiring.status_records(args.repo, state_dir, flags.git_options(args))
            writers = wiring.status_record_writers(args.repo, state_dir, flags.git_options(args), verifier.trusted)
            for path, data in records:
                problems = verify_record(path, data, observed) + ([writers[path]] if path in writers else [])
                failures += bool(problems)
                results.append({"name": path, "ok": not problems, "problems": problems})
            for missing in missing_records(records, observed):
                failures += 1
                results.append(missing)
    finally:
        local.close()
    if args.output == "table":
        for r in results:
            mark = "ok  " if r["ok"] else "FAIL"
            what = ("agrees with the verified ClusterPacks" if str(r["name"]).startswith(".gitopsd/")
                    else "signature and artifact verified")
            # the ignore below: problems is a list[str] in a dict[str, object] row
            detail = what if r["ok"] else "; ".join(r["problems"])  # type: ignore[arg-type]
            print(f"{mark} {r['name']}: {detail}")
        record_count = sum(1 for r in results if str(r["name"]).startswith(".gitopsd/"))
        print(f"{len(results) - failures} of {len(results)} verified "
              f"({len(results) - record_count} ClusterPacks, {record_count} status records)")
    else:
        output.dump({"results": results, "failed": failures}, args.output)
    return EXIT_CHANGES if failures else EXIT_OK


def verify_pack(found: instance.ObservedPack, verifier: wiring.KeyVerifier, artifacts: object) -> list[str]:
    """Problems of one stored ClusterPack: its signature over the Go-style JSON of its spec, and its
    artifact as the registry (or the OCI layout) serves it, digest by digest."""
    problems = []
    if not found.signature:
        problems.append("no signature (annotation ontai.dev/pack-signature)")
    elif not verifier.verify(signing.payload_of_spec_json(found.spec_json), found.signature):
        problems.append("signature does not verify against the trusted keys (spec changed or wrong key)")
    spec = json.loads(found.spec_json)
    layers = {field: spec[field] for field in ("rbacDigest", "clusterScopedDigest", "workloadDigest") if spec.get(field)}
    if not found.manifest_digest:
        problems.append("spec.registryRef.digest is empty")
    else:
        # the ignore below: only registries that serve artifacts back have verify(); checked above
        problems.extend(artifacts.verify(found.base_pack_name, found.manifest_digest, layers))  # type: ignore[attr-defined]
    return problems


def verify_record(path: str, data: bytes, observed: instance.Observed) -> list[str]:
    """A status record must agree with what the store or cluster holds (each ClusterPack verified on
    its own): the ClusterPacks it lists (checksum, digests, signature, version, provenance), the
    PackInstances it lists (cluster, version, state, history), and it must be about a pack the store
    knows: a record with neither a ClusterPack nor a PackInstance behind it is invented."""
    try:
        record = yamlload.load_one(data, path)
    except errors.GitopsdError as err:
        return [str(err)]
    if not isinstance(record, dict):
        return ["not a status record (a YAML mapping)"]
    problems = []
    base = str(record.get("basePackName", ""))
    if f"{status_core.STATUS_DIR}/{base}.yaml" != path:
        problems.append(f"basePackName {base!r} does not match the file name")
    entries = record.get("clusterPacks") or []
    listed = record.get("instances") or []
    if not isinstance(entries, list) or not isinstance(listed, list):
        return [*problems, "clusterPacks and instances must be lists"]
    ours = [p for p in observed.packs.values() if p.base_pack_name == base]
    theirs = [i for i in observed.instances.values() if i.base_pack_name == base]
    if not ours and not theirs and (entries or listed or not record.get("errors")):
        problems.append(f"no ClusterPack or PackInstance of {base!r} is in the store or cluster: the record is not gitopsd's")
    for entry in entries:
        entry = entry if isinstance(entry, dict) else {}
        name = str(entry.get("name", "?"))
        found = observed.packs.get(name)
        if found is None:
            problems.append(f"{name} is not in the store or cluster")
            continue
        spec = json.loads(found.spec_json)
        pairs = [("checksum", entry.get("checksum"), found.checksum),
                 ("registryRef.digest", (entry.get("registryRef") or {}).get("digest"), found.manifest_digest),
                 ("packSignature", entry.get("packSignature"), found.signature),
                 ("signed", entry.get("signed"), found.signature is not None),
                 ("version", entry.get("version"), spec.get("version")),
                 ("provenance", entry.get("provenance"), spec.get("provenance", {}))]
        pairs += [(field, entry.get(field), spec.get(field)) for field in ("rbacDigest", "clusterScopedDigest", "workloadDigest")]
        problems += [f"{name}: {field} {mine!r} differs from the stored {theirs!r}"
                     for field, mine, theirs in pairs if mine != theirs]
    for entry in listed:
        entry = entry if isinstance(entry, dict) else {}
        name = str(entry.get("name", "?"))
        pi = observed.instances.get(name)
        if pi is None:
            if entry.get("state") != "blocked":
                problems.append(f"PackInstance {name} is not in the store or cluster")
            continue
        state = entry.get("state")
        pairs = [("cluster", entry.get("cluster"), pi.cluster), ("version", entry.get("version"), pi.version),
                 ("history", entry.get("history"), [r.to_json() for r in pi.history])]
        if not (state == "blocked" and pi.state is not instance.InstallState.INSTALLED):
            pairs.append(("state", state, str(pi.state)))
        problems += [f"PackInstance {name}: {field} {mine!r} differs from the stored {theirs!r}"
                     for field, mine, theirs in pairs if mine != theirs]
    return problems


def missing_records(records: list[tuple[str, bytes]], observed: instance.Observed) -> list[dict[str, object]]:
    """A result per installed PackInstance that no status record lists (records dropped by a force-push)."""
    listed: set[str] = set()
    for path, data in records:
        try:
            record = yamlload.load_one(data, path)
        except errors.GitopsdError:
            continue
        if isinstance(record, dict) and isinstance(record.get("instances"), list):
            listed |= {str(e.get("name")) for e in record["instances"] if isinstance(e, dict)}
    out: list[dict[str, object]] = []
    for name, pi in sorted(observed.instances.items()):
        if pi.state is instance.InstallState.INSTALLED and name not in listed:
            path = f"{status_core.STATUS_DIR}/{pi.base_pack_name}.yaml"
            out.append({"name": path, "ok": False,
                        "problems": [f"PackInstance {name} is installed but no status record lists it"]})
    return out


def cmd_keygen(args: argparse.Namespace) -> int:
    generated = keys.generate(pathlib.Path(args.dir), principal=args.principal, force=args.force)
    print(f"private key: {generated.private_path}")
    print(f"public key:  {generated.public_path}")
    print(f"allowed_signers line (for git -c gpg.ssh.allowedSignersFile=FILE verify-commit):\n{generated.allowed_signers}")
    print(f"public key (for --trusted-keys):\n{generated.public_key.openssh()}")
    return EXIT_OK


# Exit code of an error, by its family (the same today: the code says "an error", the reason says which).
EXIT_BY_FAMILY = {errors.Family.TRANSIENT: EXIT_ERROR, errors.Family.STALLED: EXIT_ERROR, errors.Family.USAGE: EXIT_ERROR}


def flag_names(top: argparse.ArgumentParser) -> dict[str, str]:
    """Each setting (an argparse ``dest``) as the user writes it: its long flag, or its metavar
    (``REPO``). Errors name settings; only here do they become flags."""
    names: dict[str, str] = {}
    parsers = [top]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif isinstance(action, argparse._StoreFalseAction):
                continue  # a negation (--no-status) shares its dest with the flag that sets it
            elif action.option_strings:
                names.setdefault(action.dest, max(action.option_strings, key=len))
            elif isinstance(action.metavar, str):
                names.setdefault(action.dest, action.metavar)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    logs.configure(getattr(args, "log_level", "warning"), getattr(args, "log_format", "auto"))
    flags = flag_names(top)
    errors.spell_settings(lambda s: flags.get(s, errors.setting_words(s)))
    try:
        return int(args.func(args))
    except errors.GitopsdError as err:
        retry = "; transient, retrying later may succeed" if err.family.retry_may_help else ""
        print(f"error: {err} (reason {err.reason}{retry})", file=sys.stderr)
        return EXIT_BY_FAMILY[err.family]
    except BrokenPipeError:
        # The reader went away (``gitopsd get packs | head``): stop quietly, as a shell tool would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
        return EXIT_PIPE
    except OSError as err:
        # A backend on a bad day (a full disk, a read-only mount, a vanished file): one line, exit 2.
        where = f"{err.filename}: " if err.filename else ""
        what = {errno.ENOSPC: "the disk is full; free space and run again",
                errno.EROFS: "the file system is read-only; a pass that writes needs a writable state dir",
                errno.EDQUOT: "the disk quota is exhausted; free space and run again",
                }.get(err.errno or 0, err.strerror or str(err))
        print(f"error: {where}{what} (reason {errors.StalledReason.BACKEND_FAILURE})", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        errors.spell_settings(None)


if __name__ == "__main__":
    raise SystemExit(main())
