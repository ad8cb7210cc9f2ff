"""The reason vocabulary (``gitopsd/errors.py``): every reason the code reports is listed, in the
family of the error that carries it; adapters name settings, and only the CLI spells them as flags."""

from __future__ import annotations

import ast
import importlib
import pathlib
import pkgutil
import re

import pytest

import gitopsd
from gitopsd import errors
from gitopsd.cli import main as cli

ROOT = pathlib.Path(gitopsd.__file__).parent
PASCAL = re.compile(r"^[A-Z][A-Za-z]+$")


def _error_classes() -> dict[str, type[errors.GitopsdError]]:
    for info in pkgutil.walk_packages([str(ROOT)], "gitopsd."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found: dict[str, type[errors.GitopsdError]] = {}
    stack: list[type[errors.GitopsdError]] = [errors.GitopsdError]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


def _literals(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _literals(node.body) + _literals(node.orelse)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr.endswith("Reason"):
        listed = getattr(errors, node.value.attr)  # errors.UsageReason.USAGE
        return [str(listed[node.attr])]
    return []


def _reasons_in_code() -> list[tuple[str, str, str]]:
    """(where, callee or class, reason) for every reason written as a literal or an errors.*Reason member."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        where = str(path.relative_to(ROOT.parent))
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Call):
                callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                for kw in node.keywords:
                    if kw.arg == "reason":
                        out += [(f"{where}:{node.lineno}", callee, r) for r in _literals(kw.value)]
            elif isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if (isinstance(stmt, ast.Assign) and [getattr(t, "id", "") for t in stmt.targets] == ["reason"]):
                        out += [(f"{where}:{stmt.lineno}", node.name, r) for r in _literals(stmt.value)]
    return out


def test_every_reason_an_error_carries_is_listed_in_its_family() -> None:
    classes = _error_classes()
    wrong = []
    for where, callee, reason in _reasons_in_code():
        if callee in classes:
            family = classes[callee].family
            if family not in errors.families(reason):
                wrong.append(f"{where}: {callee}(reason={reason!r}) is a {family} error; list the reason there")
        elif PASCAL.match(reason) and not errors.families(reason):  # a blocked change or a delivery record
            wrong.append(f"{where}: {callee}(reason={reason!r}) is listed in no family")
    assert wrong == []


def test_the_scan_sees_the_reasons_it_checks() -> None:
    found = {(callee, reason) for _, callee, reason in _reasons_in_code()}
    assert {("SpecError", "PathEscape"), ("UsageError", "CredentialsInvalid"), ("block_packs", "ArtifactPublishFailed"),
            ("ConfigError", "KubeconfigInvalid"), ("TransientError", "Conflict")} <= found


def test_each_class_default_reason_is_in_the_family_of_its_class() -> None:
    for cls in _error_classes().values():
        assert cls.family in errors.families(cls.reason), cls


@pytest.mark.parametrize(("error", "family", "hint"), [
    (errors.TransientError("x", reason=errors.TransientReason.CONFLICT), errors.Family.TRANSIENT, True),
    (errors.SpecError("x"), errors.Family.STALLED, False),
    (errors.ImmutabilityViolation("x"), errors.Family.STALLED, False),
    (errors.UsageError("x", setting="shard"), errors.Family.USAGE, False),
], ids=["transient", "spec", "immutability", "usage"])
def test_the_retry_hint_and_exit_code_follow_the_family(error: errors.GitopsdError, family: errors.Family, hint: bool) -> None:
    assert (error.family, error.transient, error.family.retry_may_help) == (family, hint, hint)
    assert cli.EXIT_BY_FAMILY[error.family] == cli.EXIT_ERROR
    assert type(error.reason) is str  # a plain str: it goes into YAML records and metric labels


def test_a_setting_reads_as_words_and_the_cli_spells_it_as_its_flag() -> None:
    err = errors.UsageError(f"{errors.setting('git_ssh_key')} /k{{x}}: no such file; or use "
                            f"{errors.setting('git_credentials_file')}", setting="git_ssh_key")
    assert str(err) == "git ssh key /k{x}: no such file; or use git credentials file"
    flags = cli.flag_names(cli.parser())
    assert err.render(flags.__getitem__) == "--git-ssh-key /k{x}: no such file; or use --git-credentials-file"
    assert (flags["repo"], flags["status"], flags["state_dir"]) == ("REPO", "--write-status", "--state-dir")


def _settings_named_in_code() -> set[str]:
    named = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setting" and node.args:
                named.update(_literals(node.args[0]))
            if isinstance(node, ast.Call):
                named.update(r for kw in node.keywords if kw.arg == "setting" for r in _literals(kw.value))
    return named


def test_every_setting_an_error_names_is_a_flag_of_the_cli() -> None:
    named = _settings_named_in_code()
    assert {"git_credentials_file", "registry_ca", "shard", "tag"} <= named
    assert sorted(named - set(cli.flag_names(cli.parser()))) == []


def test_adapters_never_spell_a_flag_of_the_cli() -> None:
    flags = {f for f in cli.flag_names(cli.parser()).values() if f.startswith("--")}
    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(f) for f in sorted(flags, key=len, reverse=True)) + r")(?![\w-])")
    files = [p for p in (ROOT / "adapters").glob("*.py") if not p.name.startswith("kube")]
    files += [ROOT / "delivery" / "reach.py", ROOT / "delivery" / "target.py"]
    found = []
    for path in files:
        tree = ast.parse(path.read_text("utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found += [f"{path.name}:{node.lineno}: {m}" for m in pattern.findall(node.value)]
    assert found == []
