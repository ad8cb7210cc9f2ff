"""Print a revision plan (``core.preview.Report``): a compact table for a terminal, Markdown for a
pull-request comment. ``-o json`` is ``Report.to_json()`` as it is. ``live_table`` prints what
``gitopsd diff --live`` found on the target clusters (``core.livediff.Report``).

Both group the clusters of a pack that move the same way (same action, versions and objects), so
a change to a pack on ten clusters shows its diff once. Markdown starts with a summary table, puts
each pack in a collapsible ``<details>`` block, cuts a long diff after ``max_lines`` lines saying
how many were cut, and keeps the whole comment under ``budget`` characters (GitHub takes 65,536),
saying how many diffs were left out. Text from the config repo is escaped for each format.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable

from gitopsd import output
from gitopsd.core import livediff, objdiff
from gitopsd.core import preview as preview_core

MAX_LINES = 60  # lines of one object's diff shown in Markdown
BUDGET = 60_000  # characters of a whole Markdown comment


@dataclasses.dataclass(frozen=True, slots=True)
class Group:
    """Clusters of one pack that move the same way."""

    clusters: tuple[str, ...]
    first: preview_core.ClusterChange

    @property
    def words(self) -> str:
        c = self.first
        if c.action == "supersede":
            return f"{c.direction} {c.from_version} → {c.version}"
        if c.action == "create":
            return f"{c.direction or 'Initial'} {c.version}"
        if c.action == "uninstall":
            return f"uninstall {c.from_version} (every object pruned)"
        if c.action == "blocked":
            return c.reason + (f": {c.message}" if c.message else "")
        return c.reason


def groups(p: preview_core.PackChange) -> list[Group]:
    out: dict[tuple[object, ...], list[preview_core.ClusterChange]] = {}
    for c in p.clusters:
        if not c.changed:
            continue
        key = (c.action, c.version, c.from_version, c.direction, c.reason, c.message, c.objects)
        out.setdefault(key, []).append(c)
    return [Group(tuple(c.cluster for c in items), items[0]) for items in out.values()]


def _counts(diff: objdiff.ObjectDiff) -> str:
    return f"+{len(diff.added)} -{len(diff.removed)} ~{len(diff.changed)}"


def _versions(p: preview_core.PackChange) -> str:
    if p.base_version is None:
        return f"new {p.head_version}" if p.head_version else "failed"
    if p.head_version is None:
        return f"{p.base_version} removed" if not p.errors else f"{p.base_version} (head failed)"
    return p.head_version if p.base_version == p.head_version else f"{p.base_version} → {p.head_version}"


def summary_line(report: preview_core.Report) -> str:
    doc = report.to_json()["summary"]
    assert isinstance(doc, dict)
    actions = ", ".join(f"{n} {a}" for a, n in doc["instances"].items()) or "none"
    objects = doc["objects"]
    tail = f"; {doc['errors']} pack error(s)" if doc["errors"] else ""
    return (f"{doc['packsChanged']} pack(s) changed, {doc['packsUnchanged']} unchanged; instances: {actions}; objects: "
            f"{objects['added']} added, {objects['removed']} removed, {objects['changed']} changed{tail}")


# ---------------------------------------------------------------- table (a terminal)


def _diff_lines(p: output.Printer, diff: Iterable[str], indent: str) -> None:
    """A unified diff's lines after its ---/+++ header (which repeats the subject), coloured by sign."""
    for line in list(diff)[2:]:
        word = "create" if line.startswith("+") else "uninstall" if line.startswith("-") else "unchanged"
        p.line(f"{indent}{p.paint(output.printable(line), word)}")


def table(report: preview_core.Report, printer: output.Printer, *, header: str) -> None:
    p = printer
    esc = output.printable
    p.line(header)
    for pack in report.packs:
        p.line(f"  {p.paint(esc(pack.base_pack_name), 'supersede')} {esc(_versions(pack))}")
        for e in pack.errors:
            p.line(f"      {p.paint('error', 'error')}     {esc(e.reason)}: {esc(e.message)}")
        for g in groups(pack):
            c = g.first
            p.line(f"      {p.paint(f'{c.action:<9}', c.action)} {esc(', '.join(g.clusters))}: {esc(g.words)}  "
                   f"objects {_counts(c.objects)}")
            for name in c.objects.added:
                p.line(f"          {p.paint('+', 'create')} {esc(name)}")
            for name in c.objects.removed:
                p.line(f"          {p.paint('-', 'uninstall')} {esc(name)} (pruned)")
            for changed in c.objects.changed:
                p.line(f"          {p.paint('~', 'supersede')} {esc(changed.subject)}")
                _diff_lines(p, changed.diff, "              ")
    for e in report.errors:
        p.line(f"  base revision: {p.paint('error', 'error')} {esc(e.path)}: {esc(e.reason)}: {esc(e.message)}")
    p.line(summary_line(report) if report.packs else f"no changes; {report.unchanged} pack(s) unchanged")


# ---------------------------------------------------------------- Markdown (a pull-request comment)


def _md(text: str) -> str:
    """Text from the repo in a Markdown table cell or line: no HTML, no table breaks, one line."""
    return (output.printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|"))


def _code(text: str) -> str:
    return f"<code>{_md(text)}</code>"


def _short(revision: str) -> str:
    """``main@sha1:<12 hex>``: a revision short enough for a heading."""
    ref, sep, hexdigest = revision.rpartition(":")
    return f"{ref}{sep}{hexdigest[:12]}" if sep else revision


def _fence(lines: Iterable[str]) -> str:
    body = "\n".join(lines)
    ticks = "```"
    while ticks in body:
        ticks += "`"
    return f"{ticks}diff\n{body}\n{ticks}"


class _Page:
    """Lines of a comment that must stay under ``budget`` characters; what does not fit is counted."""

    RESERVE = 600  # room kept for the closing tags and the lines that say what was left out

    def __init__(self, budget: int) -> None:
        self.lines: list[str] = []
        self.budget = budget
        self.used = 0
        self.left_out: dict[str, int] = {}

    def fits(self, *lines: str) -> bool:
        return self.used + sum(len(line) + 1 for line in lines) <= self.budget - self.RESERVE

    def add(self, *lines: str, what: str | None = None) -> bool:
        """Add ``lines`` when they fit; otherwise count one ``what`` left out (when given) and add nothing."""
        if what is not None and not self.fits(*lines):
            self.left_out[what] = self.left_out.get(what, 0) + 1
            return False
        self.lines.extend(lines)
        self.used += sum(len(line) + 1 for line in lines)
        return True


def markdown(report: preview_core.Report, *, max_lines: int = MAX_LINES, budget: int = BUDGET) -> str:
    page = _Page(budget)
    page.add(f"### gitopsd plan: {_code(_short(report.base))} → {_code(_short(report.head))}", "")
    if not report.packs:
        page.add(f"No changes: {report.unchanged} pack(s) render the same objects on the same clusters.")
        return "\n".join(page.lines) + "\n"
    page.add(summary_line(report), "", "| pack | version | clusters | added | removed | changed |",
             "|---|---|---|---:|---:|---:|")
    for pack in report.packs:
        where = "; ".join(f"{g.first.action} {', '.join(g.clusters)}" for g in groups(pack)) or "—"
        if pack.errors:
            where = "; ".join(f"error {e.reason}" for e in pack.errors) + (f"; {where}" if where != "—" else "")
        counts = pack.counts
        page.add(f"| {_md(pack.base_pack_name)} | {_md(_versions(pack))} | {_md(where)} | {counts['added']} | "
                 f"{counts['removed']} | {counts['changed']} |", what="table row")
    if page.left_out.get("table row"):
        page.add(f"| … {page.left_out['table row']} more pack(s): run `gitopsd plan` to see them all | | | | | |")
    page.add("")
    for pack in report.packs:
        counts = pack.counts
        if not page.add("<details>", f"<summary><b>{_md(pack.base_pack_name)}</b> {_md(_versions(pack))}: "
                        f"+{counts['added']} -{counts['removed']} ~{counts['changed']}</summary>", "", what="pack"):
            continue
        for e in pack.errors:
            page.add(f"**error** {_md(e.reason)} in {_code(e.path)}: {_md(e.message)}", "", what="line")
        for g in groups(pack):
            c = g.first
            page.add(f"**{_md(', '.join(g.clusters))}**: {c.action}, {_md(g.words)}", "", what="line")
            listed = [page.add(f"- added {_code(name)}", what="line") for name in c.objects.added]
            listed += [page.add(f"- removed (pruned) {_code(name)}", what="line") for name in c.objects.removed]
            if any(listed):
                page.add("")
            for changed in c.objects.changed:
                if not page.add(f"- changed {_code(changed.subject)}", "", what="line"):
                    continue
                lines = list(changed.diff)
                cut = len(lines) - max_lines
                block = [_fence(lines[:max_lines] if cut > 0 else lines)]
                if cut > 0:
                    block.append(f"({cut} more line(s) of this diff cut)")
                if not page.add(*block, "", what="diff"):
                    page.add("  (diff left out to keep this comment short; run `gitopsd plan` to see it)", "")
        page.add("</details>", "")
    for e in report.errors:
        page.add(f"Base revision: **error** {_md(e.reason)} in {_code(e.path)}: {_md(e.message)}", what="line")
    words = {"pack": "pack section(s)", "line": "line(s)", "diff": "diff(s)"}
    gone = [f"{page.left_out[k]} {w}" for k, w in words.items() if page.left_out.get(k)]
    if gone:
        page.add(f"{', '.join(gone)} left out to keep this comment under {budget} characters.")
    return "\n".join(page.lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------- against the live clusters (diff --live)


def live_summary(report: livediff.Report) -> str:
    counts = report.counts()
    reached = len(report.clusters) - len(report.unreachable)
    unreachable = f", {len(report.unreachable)} unreachable" if report.unreachable else ""
    return (f"live: {reached} cluster(s) compared{unreachable}; objects: {counts['changed']} changed, "
            f"{counts['missing']} missing, {counts['prune']} to prune, {counts['refused']} refused, "
            f"{counts['inSync']} in sync")


def live_table(report: livediff.Report, printer: output.Printer) -> None:
    """Per cluster, per pack: objects a delivery would change (with the diff from the live object),
    objects the cluster lacks, objects a delivery would prune; an unreachable cluster on one line."""
    p = printer
    esc = output.printable
    p.line(live_summary(report))
    for c in report.clusters:
        if c.error:
            p.line(f"  cluster {esc(c.cluster)}: {p.paint('unreachable', 'error')}: {esc(c.error)}")
            continue
        moving = [pk for pk in c.packs if pk.has_changes]
        if not moving:
            p.line(f"  cluster {esc(c.cluster)}: in sync ({len(c.packs)} pack(s))")
            continue
        p.line(f"  cluster {esc(c.cluster)}: {len(moving)} of {len(c.packs)} pack(s) would change")
        for pk in moving:
            version = pk.version or "uninstalled"
            p.line(f"    {p.paint(esc(pk.base_pack_name), 'supersede')} {esc(version)} ({esc(pk.instance)})")
            if pk.problem:
                p.line(f"        {p.paint('error', 'error')} {esc(pk.problem)}")
            for changed in pk.changed:
                p.line(f"        {p.paint('~', 'supersede')} {esc(changed.subject)} (would change)")
                _diff_lines(p, changed.diff, "            ")
            for name in pk.missing:
                p.line(f"        {p.paint('+', 'create')} {esc(name)} (missing in the cluster)")
            for name in pk.prune:
                p.line(f"        {p.paint('-', 'uninstall')} {esc(name)} (would be pruned)")
            for refused in pk.refused:
                p.line(f"        {p.paint('!', 'error')} {esc(refused.subject)} refused: {esc(refused.message)}")


def live_markdown(report: livediff.Report) -> str:
    """The live comparison under a Markdown plan: its summary, then the table form in a fenced block."""
    buffer = io.StringIO()
    live_table(report, output.Printer(buffer, colour=False))
    lines = buffer.getvalue().splitlines()
    return "\n".join(["", f"#### Live clusters: {_md(lines[0])}", "", "<details>", "", _fence(lines[1:]), "",
                      "</details>", ""]) + "\n"
