"""``gitopsd plan REPO --base REF [--head REF]``: what merging a change would do to every cluster.

``gitopsd.cli`` registers it with ``cli_plan.add_parser(sub)``. The work is ``gitopsd.preview``
(two dry-run passes, one plan between them, the objects of what changes); the printing is
``gitopsd.planformat``. Exit codes as ``gitopsd diff``: 0 no change, 1 changes (or a failed
pack), 2 error.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from gitopsd import errors, output, planformat, preview
from gitopsd.cli import flags
from gitopsd.wiring import compose as wiring

EPILOG = """\
exit codes:
  0  no change: every cluster would run the same objects
  1  changes (or a pack that fails to compile at the head revision)
  2  error (bad arguments, not a Git repository, an unknown revision, invalid gitopsd.yaml)

examples:
  gitopsd plan . --base origin/main                   what this branch changes, against main
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
    p.add_argument("--head", metavar="REF", help="revision to compare to (default: HEAD, the checked-out branch's tip)")
    flags.common(p, repo=False, output=False)
    p.add_argument("-o", "--output", choices=("table", "json", "markdown"), default="table",
                   help="output format (default: %(default)s; markdown is sized for a pull-request comment)")
    p.add_argument("--max-diff-lines", type=int, default=planformat.MAX_LINES, metavar="N",
                   help="markdown: lines of one object's diff before it is cut (default: %(default)s)")
    p.add_argument("--registry-url", metavar="HOST[:PORT]/PATH", help="registry URL recorded in ClusterPacks "
                   "(default: gitopsd.yaml 'registry'); use the one reconcile uses to share its compile cache")
    flags.render(p)
    p.set_defaults(func=cmd_plan)
    return p


def cmd_plan(args: argparse.Namespace) -> int:
    repo = pathlib.Path(args.repo)
    if wiring.repo_kind(args.repo) is wiring.RepoKind.URL:
        raise errors.ConfigError(f"{args.repo}: gitopsd plan reads a clone on disk; clone the config repo and give its "
                                 "path", reason="Usage")
    state_dir = pathlib.Path(args.state_dir) if args.state_dir else wiring.default_state_dir(args.repo)
    wiring.check_state_dir(state_dir, repo)
    if args.max_diff_lines < 1:
        raise errors.ConfigError(f"--max-diff-lines {args.max_diff_lines}: give a whole number of at least 1", reason="Usage")
    local = wiring.open_local(state_dir, read_only=not wiring.writable(state_dir))
    try:
        outcome = preview.plan(repo, local, base_ref=args.base, head_ref=args.head, registry_url=args.registry_url,
                               render_workers=flags.render_workers(args), progress=output.progress(sys.stderr))
    finally:
        local.close()
    report = outcome.report
    if args.output == "json":
        doc = report.to_json()
        doc["timings"] = {k: round(v, 4) for k, v in outcome.timings.items()}
        output.dump(doc, "json")
    elif args.output == "markdown":
        sys.stdout.write(planformat.markdown(report, max_lines=args.max_diff_lines))
    else:
        printer = output.Printer()
        header = (f"Plan of {args.repo}: {outcome.base.state.tree.snapshot.description if outcome.base.state.tree else args.base}"
                  f" -> {outcome.head.state.tree.snapshot.description if outcome.head.state.tree else 'HEAD'}")
        planformat.table(report, printer, header=output.printable(header))
        again = f"; rendered again to show objects: {', '.join(outcome.rendered_again)}" if outcome.rendered_again else ""
        printer.line(f"state dir {state_dir}; {outcome.timings['total']:.2f}s{again}")
    return 1 if report.has_changes else 0


