"""State-dir scenarios shared by tests/reliability/test_state_dir.py and ``bench/chaos``: first runs
started at the same instant on one fresh state dir, and damaged state dirs (corrupt databases,
a full disk, a read-only mount)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

from tests.reliability import harness


def burst(runs: list[list[str]], *, cwd: pathlib.Path, env: dict[str, str] | None = None,
          timeout: float = 600) -> list[tuple[int, str]]:
    """Start every argv of ``runs`` at once (``tests/reliability/burst.py``); (exit code, stderr) each."""
    cwd.mkdir(parents=True, exist_ok=True)
    spec = []
    for index, argv in enumerate(runs):
        spec.append({"argv": argv, "stdout": str(cwd / f".burst-{index}.out"), "stderr": str(cwd / f".burst-{index}.err")})
    proc = subprocess.run([harness.PYTHON, "-m", "tests.reliability.burst"], input=json.dumps(
        {"runs": spec, "cwd": str(cwd), "env": env or {}}), capture_output=True, text=True, cwd=harness.ROOT,
        timeout=timeout, check=True)
    out = []
    for run, reply in zip(spec, json.loads(proc.stdout), strict=True):
        out.append((os.waitstatus_to_exitcode(reply["status"]), pathlib.Path(run["stderr"]).read_text("utf-8", "replace")))
        pathlib.Path(run["stdout"]).unlink()
        pathlib.Path(run["stderr"]).unlink()
    return out


def first_runs(pool: harness.ZygotePool, work: pathlib.Path, *, rounds: int, runs: int,
               packs: int = 3) -> harness.Tally:
    """``rounds`` times: ``runs`` first ``reconcile``s at once on one fresh state dir (the key made
    by the state dir itself). Then the state dir must be sound: every run exited 0 (each waited
    for the lock), one key pair, the store signed by that key (``verify``), and a next pass is
    Ready with no change. A broken state dir counts as lost."""
    tally = harness.Tally(f"{runs} first runs at once on one state dir")
    repo = harness.write_pack_repo(work / "repo", packs=packs)
    for index in range(rounds):
        state = work / f"state-{index:03d}"
        problems = []
        results = burst([["reconcile", str(repo), "--state-dir", str(state)] for _ in range(runs)], cwd=work)
        codes = sorted({code for code, _ in results})
        if codes != [0]:
            bad = next(err for code, err in results if code != 0)
            problems.append(f"exit codes {codes}: {bad.strip().splitlines()[-1:] if bad.strip() else ''}")
        if "Traceback" in "".join(err for _, err in results):
            problems.append("a traceback")
        key_files = sorted(p.name for p in (state / "keys").iterdir()) if (state / "keys").is_dir() else []
        if key_files != ["signing.key", "signing.key.pub"]:
            problems.append(f"key files {key_files}")
        if not problems:
            with pool.get() as zygote:
                problems += harness.state_checks(zygote, state, str(state / "keys" / "signing.key.pub"), work)
        again = pool.run("reconcile", str(repo), "--state-dir", str(state), "-o", "json", cwd=work)
        if again.returncode != 0:
            problems.append(f"the next pass exited {again.returncode}: {again.stderr.strip()[-300:]}")
        else:
            summary = json.loads(again.stdout)["summary"]
            if summary["ready"] is not True or summary["hasChanges"] or summary["failed"]:
                problems.append(f"the next pass: {json.dumps(summary)[:300]}")
        tally.trials += 1
        if problems:
            tally.lost += 1
            tally.failures.append(f"round {index}: {'; '.join(problems)}")
        shutil.rmtree(state, ignore_errors=True)
    return tally
