"""Hostile config-repo input: every case of ``corpus/`` is laid over a copy of examples-repo and
reconciled for real (``gitopsd reconcile -o json`` in a subprocess, embedded store in tmp).

For each case gitopsd must:
- fail only the bad pack, with ONE line naming the file and the field and saying what to do;
- reconcile the five example packs as usual (ClusterPacks and PackInstances in the store);
- leave no trace of the bad pack (no ClusterPack, no PackInstance, no artifact in the OCI index);
- not crash (no traceback), not hang (a timeout per case), and stay under ``MAX_RSS_MIB`` of peak
  resident memory, children (kustomize, the helm child) included; the bomb cases print it.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import sys

import pytest

from tests.reliability import harness

pytestmark = pytest.mark.slow

CASES = harness.load_cases()
MAX_RSS_MIB = 500  # peak resident memory of one pass, renderers included


def test_the_corpus_is_big_enough_and_every_case_says_what_it_is() -> None:
    assert len(CASES) >= 40
    for case in CASES:
        assert case.about and case.names and case.fix, case.id


def _marks(case: harness.Case) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []


RUNS = [pytest.param(c, "folder", id=c.id, marks=_marks(c)) for c in CASES] + [
    pytest.param(c, "git", id=f"{c.id}-git", marks=_marks(c)) for c in CASES if c.git
]


def _reconcile(zygotes: harness.ZygotePool, case: harness.Case, source: str,
               tmp: pathlib.Path) -> tuple[harness.Run, pathlib.Path]:
    """``source`` is how the repo is read: a plain folder, or a Git work tree (at HEAD, via pygit2)."""
    repo = harness.build_repo(case, tmp / "repo")
    if source == "git":
        harness.commit_all(repo)
    state = tmp / "state"
    run = zygotes.run("reconcile", str(repo), "--state-dir", str(state), "-o", "json", cwd=tmp, timeout=case.timeout)
    return run, state


@pytest.fixture(scope="module")
def reconciled(request: pytest.FixtureRequest, zygotes: harness.ZygotePool,
               tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[harness.Run, pathlib.Path]]:
    """Every selected case reconciled up front, ``WORKERS`` subprocesses at a time (each run is its
    own process: its peak RSS is its own); the tests below then check one result each."""
    module = sys.modules[__name__]
    wanted = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "module", None) is module and "case" in params:
            wanted.append((params["case"], params["source"]))
    wanted.sort(key=lambda pair: not pair[0].bomb)  # the slow ones first
    with concurrent.futures.ThreadPoolExecutor(harness.WORKERS) as pool:
        futures = {(c.id, source): pool.submit(_reconcile, zygotes, c, source, tmp_path_factory.mktemp(f"{c.id}-{source}"))
                   for c, source in wanted}
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize(("case", "source"), RUNS)
def test_hostile_input_fails_only_its_pack_with_one_clear_line(
        case: harness.Case, source: str, reconciled: dict[tuple[str, str], tuple[harness.Run, pathlib.Path]]) -> None:
    run, state = reconciled[(case.id, source)]
    if case.bomb:
        harness.MEMORY.append((case.id if source == "folder" else f"{case.id} ({source})", run.max_rss_mib, run.seconds))
    problems = harness.corpus_problems(case, run, state, max_rss_mib=MAX_RSS_MIB)
    assert problems == [], "\n".join(problems) + "\n" + run.describe()
