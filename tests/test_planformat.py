"""Markdown of a revision plan: it stays under the size of a pull-request comment; the live section's table and block."""

from __future__ import annotations

import io

from gitopsd import output, planformat
from gitopsd.core import livediff, objdiff
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


def live_report() -> livediff.Report:
    changed = objdiff.Changed("ConfigMap/ns/settings", ("--- live/ConfigMap/ns/settings", "+++ desired/ConfigMap/ns/settings",
                                                        "@@ -1 +1 @@", "-  value: hand", "+  value: '1'"))
    pack = livediff.PackLive("app-a", "app", "1.1.0", changed=(changed,), missing=("ConfigMap/ns/gone",),
                             prune=("ConfigMap/ns/legacy",), in_sync=2)
    return livediff.Report((livediff.ClusterLive("a", (pack,)), livediff.ClusterLive("b", error="ClusterUnreachable: down"),
                            livediff.ClusterLive("c", (livediff.PackLive("app-c", "app", "1.1.0", in_sync=4),))))


def test_live_table_gives_each_cluster_its_packs_and_an_unreachable_one_its_own_line() -> None:
    buffer = io.StringIO()
    planformat.live_table(live_report(), output.Printer(buffer, colour=False))
    assert buffer.getvalue().splitlines() == [
        "live: 2 cluster(s) compared, 1 unreachable; objects: 1 changed, 1 missing, 1 to prune, 0 refused, 6 in sync",
        "  cluster a: 1 of 1 pack(s) would change",
        "    app 1.1.0 (app-a)",
        "        ~ ConfigMap/ns/settings (would change)",
        "            @@ -1 +1 @@",
        "            -  value: hand",
        "            +  value: '1'",
        "        + ConfigMap/ns/gone (missing in the cluster)",
        "        - ConfigMap/ns/legacy (would be pruned)",
        "  cluster b: unreachable: ClusterUnreachable: down",
        "  cluster c: in sync (1 pack(s))",
    ]


def test_live_markdown_is_a_heading_and_one_collapsible_diff_block() -> None:
    text = planformat.live_markdown(live_report())
    lines = text.splitlines()
    assert lines[1].startswith("#### Live clusters: live: 2 cluster(s) compared, 1 unreachable")
    assert lines[3:6] == ["<details>", "", "```diff"] and lines[-2:] == ["</details>", ""]
    assert "  cluster b: unreachable: ClusterUnreachable: down" in lines
