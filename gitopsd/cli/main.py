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
import os
import pathlib
import sys
from collections.abc import Sequence

import structlog

from gitopsd import __version__, errors, logs, output, reconcile
from gitopsd.adapters import keys, statelock
from gitopsd.cli import flags
from gitopsd.cli import get as cli_get
from gitopsd.cli import plan as cli_plan
from gitopsd.cli import run as cli_run
from gitopsd.cli import verify as cli_verify
from gitopsd.core import delivery as delivery_core
from gitopsd.model import delivery
from gitopsd.wiring import assemble
from gitopsd.wiring import compose as wiring
from gitopsd.wiring import kube as wiring_kube
from gitopsd.wiring import settings as wiring_settings

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
        flags.kube(p)
        if name == "reconcile":
            flags.render_wait(p)
            flags.full(p)
        p.add_argument("-v", "--verbose", action="store_true", help="also list unchanged objects")
        if name == "diff":
            cli_plan.add_live_flag(p)
        p.set_defaults(func=cmd_pass, mode=name)

    cli_get.add_parser(sub)
    cli_verify.add_parser(sub)

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


def _repo_path(repo: str) -> pathlib.Path:
    path = pathlib.Path(repo)
    if not path.is_dir():
        raise errors.ConfigError(f"config repo {repo} is not a folder; give the path of a config repo", reason="RepoNotFound")
    return path


def cmd_pass(settings: wiring_settings.Settings) -> int:
    assert settings.repo is not None  # REPO is a positional argument of reconcile, dry-run and diff
    repo = settings.repo
    wiring.repo_kind(repo)  # a missing folder or a URL holding credentials stops here, before the state dir is made
    state_dir = wiring.state_dir(settings)
    dry_run = settings.command != "reconcile"
    # One writer per state dir: held from before its first write (the demo remote, the key) to the end.
    held = statelock.acquire(state_dir) if not dry_run or settings.as_git_remote else None
    try:
        return _pass(settings, repo, state_dir, dry_run)
    finally:
        if held is not None:
            held.release()


def _pass(settings: wiring_settings.Settings, repo: str, state_dir: pathlib.Path, dry_run: bool) -> int:
    if settings.as_git_remote:
        if wiring.repo_kind(repo) is not wiring.RepoKind.FOLDER:
            raise errors.ConfigError(f"--as-git-remote takes a plain folder; {repo} already is a Git remote", reason="Usage")
        repo = str(wiring.ensure_demo_remote(_repo_path(repo), state_dir))
    kind = wiring.repo_kind(repo)
    if kind is not wiring.RepoKind.URL:
        wiring.check_state_dir(state_dir, pathlib.Path(repo))
    flags.require_signing_key(settings, writes=not dry_run, kube=wiring_kube.options(settings) is not None)
    with assemble.pass_env(settings, state_dir, repo=repo, dry_run=dry_run, progress=output.progress(sys.stderr)) as wired:
        state = reconcile.run_applying_slow_renders_last(wired.env)
        live = cli_plan.live_diff(settings, wired, state)
    assert state.summary is not None and state.plan is not None and state.tree is not None
    summary = state.summary
    mode = settings.command
    log.info("pass finished", mode=mode, **summary.to_json(notes=False),
             seconds=round(state.timings["total"], 3))
    if settings.output == "table":
        printer = output.Printer()
        verb = {"reconcile": "Reconciled", "dry-run": "Dry run of", "diff": "Diff of"}[mode]
        header = f"{verb} {settings.repo} ({state.tree.snapshot.description}) at {state.revision}"
        output.print_summary(printer, summary, header=header, verbose=settings.verbose)
        for line in delivery_lines(state):
            printer.line(line)
        cli_plan.print_live(live, printer)
        printer.line(f"state dir {state_dir}; {state.timings['total']:.2f}s")
        for line in status_lines(wired, state):
            printer.line(line)
    else:
        output.dump({**pass_document(state, mode, state_dir), **cli_plan.live_document(live)}, settings.output)
    if mode == "diff":  # a failed pack exits 1 as with reconcile; 2 is for errors of the run itself
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


def cmd_keygen(settings: wiring_settings.Settings) -> int:
    given = settings.keygen
    generated = keys.generate(pathlib.Path(given.dir), principal=given.principal, force=given.force)
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
    settings = wiring_settings.Settings.from_args(args)  # the one reading of flags and environment
    logs.configure(settings.log_level, settings.log_format)
    flags = flag_names(top)
    errors.spell_settings(lambda s: flags.get(s, errors.setting_words(s)))
    try:
        return int(args.func(settings))
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
