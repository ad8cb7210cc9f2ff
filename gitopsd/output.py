"""Render results for people and for scripts: readable lines per pack, tables, JSON and YAML.

The CLI picks the format (``-o table|json|yaml``); colour only on a TTY. Secret objects never
appear here: ClusterPacks hold digests, not manifests, and subjects of Secrets are masked. Text
that comes from the config repo (file names, messages quoting it) is printed with control
characters escaped, so a hostile name cannot break a line or send terminal escape sequences.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import IO

import yaml

from gitopsd.core import summarize
from gitopsd.model import change

_COLOURS = {"create": "32", "supersede": "36", "uninstall": "33", "blocked": "31", "unchanged": "2", "error": "31",
            "warning": "33"}


class Printer:
    def __init__(self, stream: IO[str] | None = None, *, colour: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = self.stream.isatty() if colour is None else colour

    def paint(self, text: str, word: str) -> str:
        code = _COLOURS.get(word)
        return f"\033[{code}m{text}\033[0m" if self.colour and code else text

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")


def printable(text: str) -> str:
    """``text`` with control characters (newlines, ESC, ...) escaped: one line, no terminal codes."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def short(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}:{hexdigest[:12]}" if hexdigest else digest


def change_words(c: change.Change) -> str:
    if c.kind is change.ObjectKind.CLUSTER_PACK:
        return c.reason
    if c.action is change.Action.SUPERSEDE:
        return f"{c.direction} {c.from_version} -> {c.version}"
    if c.action is change.Action.CREATE:
        return f"{c.direction} {c.version}"
    return c.reason


def hook_words(line: summarize.PackLine) -> str | None:
    """``hooks: pre-install Job/ns/x (weight -5), post-install Job/ns/y; dropped: Pod/smoke (test)``,
    or None for a pack without hooks."""
    if not line.hooks and not line.dropped_hooks:
        return None
    kept = ", ".join(f"{','.join(h.phases)} {h.subject}" + (f" (weight {h.weight})" if h.weight else "")
                     for h in line.hooks) or "none kept"
    dropped = f"; dropped: {', '.join(line.dropped_hooks)}" if line.dropped_hooks else ""
    return f"hooks: {kept}{dropped}"


def print_summary(p: Printer, summary: summarize.Summary, *, header: str, verbose: bool = False) -> None:
    p.line(header)
    for line in summary.packs:
        if line.error is not None:
            text = line.error.message if line.path in line.error.message else f"{line.path}: {line.error.message}"
            p.line(f"  {p.paint('✗', 'error')} {printable(text)}")
            continue
        if line.version:
            how = "cached" if line.cached else "compiled"
            stages = ",".join(line.stages) or "-"
            p.line(
                f"  {line.base_pack_name} {line.version}  {line.category}  {line.objects} objects  "
                f"stages {stages}  {short(line.checksum)}  ({how})"
            )
        else:
            p.line(f"  {line.base_pack_name}  (removed from Git)")
        hooks = hook_words(line)
        if hooks is not None:
            p.line(f"      {printable(hooks)}")
        for warning in line.warnings:
            p.line(f"      {p.paint('warning', 'warning')}: {printable(warning)}")
        writes = [c for c in line.changes if c.action is not change.Action.UNCHANGED]
        unchanged = len(line.changes) - len(writes)
        for c in writes:
            where = f" on {c.cluster}" if c.cluster else ""
            verb = p.paint(f"{c.action:<9}", str(c.action))
            p.line(f"      {verb} {c.kind} {c.name}{where}: {printable(change_words(c))}")
            if c.condition is not None and c.action is change.Action.BLOCKED:
                p.line(f"                {printable(c.condition.message)}")
        if unchanged and (verbose or not writes):
            p.line(f"      {p.paint('unchanged', 'unchanged')} {unchanged} object(s)")
    counts = summary.counts
    parts = []
    done = {"create": "created", "supersede": "superseded", "uninstall": "uninstalled", "blocked": "blocked"}
    for action, past in done.items():
        n = sum(v for k, v in counts.items() if k.endswith(" " + action))
        if n:
            parts.append(f"{n} {past if not summary.dry_run or action == 'blocked' else 'to ' + action}")
    ready = "Ready" if summary.ready else "NotReady"
    tail = ", ".join(parts) if parts else "no changes"
    p.line(
        f"{summary.compiled + summary.cached + len(summary.errors)} packs ({summary.compiled} compiled, {summary.cached} cached, "
        f"{len(summary.errors)} failed); {tail}; {ready}"
    )


def dump(data: object, fmt: str, stream: IO[str] | None = None) -> None:
    out = stream or sys.stdout
    if fmt == "json":
        json.dump(data, out, indent=2, sort_keys=False, ensure_ascii=False)
        out.write("\n")
    else:
        yaml.safe_dump(data, out, sort_keys=False, allow_unicode=True)


def table(rows: Sequence[Sequence[str]], headers: Sequence[str], stream: IO[str] | None = None) -> None:
    out = stream or sys.stdout
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    out.write("   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for row in rows:
        out.write("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def progress(stream: IO[str]) -> Callable[[str, dict[str, object]], None] | None:
    """Per-pack progress of the compile step, on one line of ``stream`` when it is a TTY (None
    otherwise): ``[index/total] compiled|cached path``, cleared after the last pack."""
    if not stream.isatty():
        return None

    def show(event: str, facts: dict[str, object]) -> None:
        word = "cached" if facts.get("cached") else event
        stream.write(f"\r\033[K[{facts['index']}/{facts['total']}] {word} {printable(str(facts['path']))}")
        if facts["index"] == facts["total"]:
            stream.write("\r\033[K")
        stream.flush()

    return show
