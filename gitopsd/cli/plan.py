"""``gitopsd plan REPO --base REF [--head REF]``: what merging a change would do to every cluster.

``gitopsd.cli`` registers it with ``cli_plan.add_parser(sub)``. The work is ``gitopsd.preview``
(two dry-run passes, one plan between them, the objects of what changes); the printing is
``gitopsd.planformat``. Exit codes as ``gitopsd diff``: 0 no change, 1 changes (or a failed
pack), 2 error. It also holds ``gitopsd diff --live``'s part of ``diff`` (the flag, the comparison
with the live clusters, its output and exit code), so ``gitopsd.cli`` only calls in.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import TYPE_CHECKING

from gitopsd import errors, output, reconcile
from gitopsd.cli import flags
from gitopsd.wiring import compose as wiring
from gitopsd.wiring import delivery as wiring_delivery
from gitopsd.wiring import settings as wiring_settings

if TYPE_CHECKING:  # the printing of plans and live diffs: imported by `plan` and `diff --live` alone, when they print
    from gitopsd.core import livediff

EPILOG = """\
exit codes:
  0  no change: every cluster would run the same objects
  1  changes (or a pack that fails to compile at the head revision)
  2  error (bad arguments, not a Git repository, an unknown revision, invalid gitopsd.yaml); with --live also
     a target cluster that could not be reached or read (the other clusters are still compared and shown)

examples:
  gitopsd plan . --base origin/main                   what this branch and the uncommitted work change, against main
  gitopsd plan . --base origin/main --head HEAD       the same, committed work only
  gitopsd plan . --base HEAD~1 -o markdown            the last commit, as a pull-request comment
  gitopsd plan config.git --base v1.4 --head v1.5 -o json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    help_text = "compare two revisions of the config repo: per pack and cluster, versions and objects that change"
    p: argparse.ArgumentParser = subparsers.add_parser(
        "plan", help=help_text, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=help_text + " (added, removed and changed objects with a YAML diff; Secret values never shown)")
    p.add_argument("repo", metavar="REPO", help="config repo: a Git work tree or a bare repository on disk")
    p.add_argument("--base", required=True, metavar="REF", help="revision to compare from: branch, tag, commit "
                   "(e.g. origin/main, HEAD~1)")
    p.add_argument("--head", metavar="REF", help="revision to compare to (default: the work tree as it is, uncommitted "
                   "and untracked files included, .gitignore respected; for a bare repository its HEAD branch's tip)")
    flags.common(p, repo=False, output=False)
    p.add_argument("-o", "--output", choices=("table", "json", "markdown"), default="table",
                   help="output format (default: %(default)s; markdown is sized for a pull-request comment)")
    p.add_argument("--max-diff-lines", type=int, default=wiring_settings.DEFAULT_MAX_DIFF_LINES, metavar="N",
                   help="markdown: lines of one object's diff before it is cut (default: %(default)s)")
    p.add_argument("--registry-url", metavar="HOST[:PORT]/PATH", help="registry URL recorded in ClusterPacks "
                   "(default: gitopsd.yaml 'registry'); use the one reconcile uses to share its compile cache")
    flags.render(p)
    add_live_flag(p, what="the head revision")
    flags.delivery(p)
    p.set_defaults(func=cmd_plan)
    return p


def cmd_plan(settings: wiring_settings.Settings) -> int:
    assert settings.repo is not None  # REPO is a positional argument of plan
    repo = pathlib.Path(settings.repo)
    if wiring.repo_kind(settings.repo) is wiring.RepoKind.URL:
        raise errors.ConfigError(f"{settings.repo}: gitopsd plan reads a clone on disk; clone the config repo and give its "
                                 "path", reason="Usage")
    state_dir = wiring.state_dir(settings)
    wiring.check_state_dir(state_dir, repo)
    given = settings.plan
    if given.max_diff_lines < 1:
        raise errors.ConfigError(f"--max-diff-lines {given.max_diff_lines}: give a whole number of at least 1", reason="Usage")
    where = wiring_delivery.reach_of(settings) if settings.live else None
    if settings.live and where is None:
        raise errors.ConfigError("--live reads the target clusters: give --kubeconfig-dir DIR or --cluster-kubeconfig "
                                 "NAME=PATH", reason="Usage")
    local = wiring.open_local(state_dir, read_only=not wiring.writable(state_dir))
    try:
        from gitopsd import preview  # noqa: PLC0415 - the compile of two revisions: imported by `plan` alone

        outcome = preview.plan(repo, local, settings, base_ref=given.base, head_ref=given.head,
                               progress=output.progress(sys.stderr), live_reach=where)
    finally:
        local.close()
    from gitopsd import planformat  # noqa: PLC0415 - see the imports at the top

    report = outcome.report
    if settings.output == "json":
        doc = report.to_json()
        doc["timings"] = {k: round(v, 4) for k, v in outcome.timings.items()}
        output.dump({**doc, **live_document(outcome.live)}, "json")
    elif settings.output == "markdown":
        sys.stdout.write(planformat.markdown(report, max_lines=given.max_diff_lines))
        if outcome.live is not None:
            sys.stdout.write(planformat.live_markdown(outcome.live))
    else:
        printer = output.Printer()
        base, head = outcome.base.state.tree, outcome.head.state.tree
        header = (f"Plan of {settings.repo}: {base.snapshot.description if base else given.base}"
                  f" -> {head.snapshot.description if head else 'HEAD'}")
        planformat.table(report, printer, header=output.printable(header))
        print_live(outcome.live, printer)
        again = f"; rendered again to show objects: {', '.join(outcome.rendered_again)}" if outcome.rendered_again else ""
        printer.line(f"state dir {state_dir}; {outcome.timings['total']:.2f}s{again}")
    return live_exit(outcome.live, 1 if report.has_changes else 0)


# ---------------------------------------------------------------- gitopsd diff --live (registered by gitopsd.cli)


def add_live_flag(p: argparse.ArgumentParser, *, what: str = "this pass") -> None:
    p.add_argument("--live", action="store_true",
                   help=f"also compare {what} with what each target cluster holds (reached as delivery reaches it: "
                   "--kubeconfig-dir, --cluster-kubeconfig or kubeconfig Secrets): a get and a server-side apply dry "
                   "run of every object, field manager gitopsd; objects that would change (a YAML diff from the live "
                   "object), are missing, or would be pruned; nothing is written to any cluster")


def live_diff(settings: wiring_settings.Settings, wired: wiring.Wired,
              state: reconcile.PassState) -> livediff.Report | None:
    """With ``--live``: the live clusters against what delivering this pass's plan would make of them."""
    if not settings.live:
        return None
    where = wiring_delivery.reach_of(settings, secrets=wired.secrets)
    if where is None:
        raise errors.ConfigError("--live reads the target clusters: give --kubeconfig-dir DIR or --cluster-kubeconfig "
                                 "NAME=PATH (or --kubeconfig of a management cluster holding the kubeconfig Secrets)",
                                 reason="Usage")
    from gitopsd import preview  # noqa: PLC0415 - as above

    return preview.live(where, wired.env, state, wired.local, workers=settings.delivery.workers)


def print_live(report: livediff.Report | None, printer: output.Printer) -> None:
    if report is not None:
        from gitopsd import planformat  # noqa: PLC0415 - see the imports at the top

        planformat.live_table(report, printer)


def live_document(report: livediff.Report | None) -> dict[str, object]:
    """The ``live`` key of ``gitopsd diff -o json`` (only with ``--live``)."""
    return {} if report is None else {"live": report.to_json()}


def live_exit(report: livediff.Report | None, code: int) -> int:
    """``diff``'s exit code with ``--live``: 2 when a cluster could not be reached or read (after
    the others were compared and shown), 1 when a cluster would change, else the pass's own."""
    if report is None:
        return code
    if report.unreachable:
        return 2
    return 1 if report.has_changes else code
