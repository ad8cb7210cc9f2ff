"""Markdown of a revision plan: it stays under the size of a pull-request comment."""

from __future__ import annotations

from gitopsd import planformat
from gitopsd.core import objdiff
from gitopsd.core import preview as preview_core


def big_report(objects: int) -> preview_core.Report:
    diff = objdiff.ObjectDiff(changed=tuple(
        objdiff.Changed(f"ConfigMap/app/cm-{i:03d}", ("--- a", "+++ b", "@@ -1 +1 @@", f"-  v: {'x' * 300}", f"+  v: {'y' * 300}"))
        for i in range(objects)))
    change = preview_core.ClusterChange(cluster="dev", instance="app-dev", action="supersede", version="1.0.1",
                                        from_version="1.0.0", direction="Upgrade", reason="upgrade 1.0.0 -> 1.0.1",
                                        message="", objects=diff)
    pack = preview_core.PackChange("app", "1.0.0", "1.0.1", (change,))
    return preview_core.Report("main@sha1:" + "a" * 40, "pr@sha1:" + "b" * 40, (pack,), unchanged=0)


def test_a_plan_past_the_budget_stays_under_it_and_counts_what_it_left_out() -> None:
    text = planformat.markdown(big_report(400), budget=20_000)
    assert len(text) <= 20_000
    shown = text.count("```diff")
    assert 20 < shown < 40
    cut = text.count("(diff left out to keep this comment short; run `gitopsd plan` to see it)")
    listed = text.count("- changed <code>ConfigMap/app/cm-")
    assert listed == shown + cut and listed < 400
    assert text.rstrip().splitlines()[-3:] == [
        "</details>", "", f"{400 - listed} line(s), {cut} diff(s) left out to keep this comment under 20000 characters."]


def test_a_small_plan_is_shown_whole() -> None:
    text = planformat.markdown(big_report(3))
    assert text.count("```diff") == 3 and "left out" not in text


def test_markdown_escapes_html_and_table_breaks_from_the_repo() -> None:
    report = big_report(1)
    pack = report.packs[0]
    evil = preview_core.PackChange("<img src=x>|x", pack.base_version, pack.head_version, pack.clusters)
    text = planformat.markdown(preview_core.Report(report.base, report.head, (evil,), unchanged=0))
    assert "<img" not in text
    assert "| &lt;img src=x&gt;\\|x | 1.0.0 → 1.0.1 | supersede dev | 0 | 0 | 1 |" in text.splitlines()
