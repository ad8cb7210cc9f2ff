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


# --- damaged state dirs ---------------------------------------------------------------------------
def _first_layer(state: pathlib.Path) -> pathlib.Path:
    index = json.loads((state / "oci" / "index.json").read_text())
    manifest = json.loads((state / "oci" / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    return state / "oci" / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]


def _flip(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


# id -> (what it does to a reconciled state dir, the verify exit code before a pass, the reconcile
# exit code, the first words of its one stderr line when it fails). After a reconcile that exits 0
# the state dir must verify and hold what it held.
DAMAGE: dict[str, tuple[object, int, int, str]] = {
    "index-json-corrupt": (lambda s: (s / "oci" / "index.json").write_text("{not json"), 1, 0, ""),
    "index-json-tags-lost": (lambda s: (s / "oci" / "index.json").write_text(
        '{"schemaVersion": 2, "manifests": []}'), 1, 0, ""),
    "blob-of-version-in-use-corrupt": (lambda s: _flip(_first_layer(s)), 1, 0, ""),
    "blob-of-version-in-use-missing": (lambda s: _first_layer(s).unlink(), 1, 0, ""),
    "cache-db-corrupt": (lambda s: (s / "cache.db").write_bytes(b"not a database" * 100), 0, 0, ""),
    "store-db-corrupt": (lambda s: (s / "store.db").write_bytes(b"not a database" * 100), 2, 2,
                         "error: local store {state}/store.db is damaged (file is not a database); move it away"),
}


def damaged(pool: harness.ZygotePool, work: pathlib.Path, scenario: str, *, trials: int = 1) -> harness.Tally:
    """``trials`` times: reconcile, damage the state dir as ``scenario`` says, then check ``verify``,
    ``reconcile`` (exit codes, one line, no traceback) and, when the pass succeeds, that the state
    verifies and equals the state before the damage (else it is lost)."""
    damage, verify_code, reconcile_code, line = DAMAGE[scenario]
    tally = harness.Tally(f"state dir: {scenario}")
    repo = harness.write_pack_repo(work / "repo", packs=3)
    for index in range(trials):
        state = work / f"{scenario}-{index:03d}"
        problems = []
        first = pool.run("reconcile", str(repo), "--state-dir", str(state), cwd=work)
        assert first.returncode == 0, first.describe()
        before = harness.final_state(state)
        damage(state)  # type: ignore[operator]
        pub = str(state / "keys" / "signing.key.pub")
        verify = pool.run("verify", "--state-dir", str(state), "--trusted-keys", pub, cwd=work)
        if verify.returncode != verify_code:
            problems.append(f"verify exited {verify.returncode}, expected {verify_code}: {verify.stdout[-300:]}")
        run = pool.run("reconcile", str(repo), "--state-dir", str(state), cwd=work)
        if run.returncode != reconcile_code:
            problems.append(f"reconcile exited {run.returncode}, expected {reconcile_code}: {run.stderr[-300:]}")
        for what in (verify, run):
            if "Traceback" in what.stderr:
                problems.append(f"a traceback from {' '.join(what.argv[:1])}")
        if line:
            last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
            if not last.startswith(line.format(state=state.resolve())):
                problems.append(f"stderr line {last[:300]!r}")
        if reconcile_code == 0:
            problems += harness.layout_problems(state)
            again = pool.run("verify", "--state-dir", str(state), "--trusted-keys", pub, cwd=work)
            if again.returncode != 0:
                problems.append(f"verify after the pass exited {again.returncode}: {again.stdout[-300:]}")
            if harness.final_state(state) != before:
                problems.append("the state after the pass differs from the state before the damage")
        tally.trials += 1
        if problems:
            tally.lost += 1
            tally.failures.append(f"{scenario} #{index}: {'; '.join(problems)}")
        shutil.rmtree(state, ignore_errors=True)
    return tally
