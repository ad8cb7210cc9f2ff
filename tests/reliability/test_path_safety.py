"""Symlinks and paths a renderer could follow out of a pack's folder (issue items 1 and 2).

An exported folder (the input of kustomize and helm) lives under the state dir, so a link kept as
its text would be read against the state dir. Real Git commits are exported here and every link
must come out as a copy of what it leads to inside the folder, or be refused.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pygit2
import pytest

from gitopsd import errors
from gitopsd.adapters import fstree, gittree, links


def _commit(repo: pathlib.Path, files: dict[str, str], symlinks: dict[str, str]) -> gittree.GitTree:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    for rel, target in symlinks.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).symlink_to(target)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    tree = gittree.open_worktree(repo, repo.parent / "state" / "trees")
    assert tree is not None
    return tree


def _listing(root: pathlib.Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = pathlib.Path(dirpath, name)
            rel = str(full.relative_to(root))
            out[rel] = "link" if full.is_symlink() else ("dir" if full.is_dir() else full.read_text())
    return out


EXPORTS = [
    pytest.param({"chart/a.yaml": "A"}, {"chart/b.yaml": "a.yaml"},
                 {"a.yaml": "A", "b.yaml": "A"}, id="file-link-inside-is-copied"),
    pytest.param({"chart/files/x": "X"}, {"chart/more": "files"},
                 {"files": "dir", "files/x": "X", "more": "dir", "more/x": "X"}, id="folder-link-inside-is-copied"),
    pytest.param({"chart/files/x": "X"}, {"chart/l1": "l2", "chart/l2": "files/x"},
                 {"files": "dir", "files/x": "X", "l1": "X", "l2": "X"}, id="chain-of-links-is-copied"),
]


@pytest.mark.parametrize(("files", "symlinks", "expected"), EXPORTS)
def test_an_export_holds_copies_of_what_links_lead_to_inside_the_folder(
        tmp_path: pathlib.Path, files: dict[str, str], symlinks: dict[str, str], expected: dict[str, str]) -> None:
    tree = _commit(tmp_path / "repo", files, symlinks)
    assert _listing(tree.materialize("chart")) == expected


REFUSED = [
    pytest.param({"chart/a.yaml": "A", "keys/signing.key": "K"}, {"chart/leak": "../keys/signing.key"},
                 "chart/leak is a symlink to '../keys/signing.key', outside the folder chart a renderer reads; "
                 "copy the file into chart instead", id="inside-the-repo-outside-the-folder"),
    pytest.param({"chart/a.yaml": "A"}, {"chart/files/leak": "../../../keys/signing.key"},
                 "chart/files/leak is a symlink to '../../../keys/signing.key', outside the config repo; "
                 "copy the file into chart instead", id="up-to-the-state-dir"),
    pytest.param({"chart/a.yaml": "A"}, {"chart/abs": "/etc/hostname"},
                 "chart/abs is a symlink to '/etc/hostname', outside the config repo; copy the file into chart instead",
                 id="absolute"),
    pytest.param({"chart/sub/a.yaml": "A"}, {"chart/sub/loop": ".."},
                 "chart/sub/loop is a symlink to '..', a folder that holds the link itself (a loop); remove the link",
                 id="loop"),
    pytest.param({"chart/a.yaml": "A"}, {"chart/gone": "missing.yaml"},
                 "chart/gone is a symlink to 'missing.yaml', which does not exist; fix or remove the link",
                 id="dangling"),
    pytest.param({"chart/a.yaml": "A"}, {"chart/b": ".", "chart/leak": "b/b/b/b/b/b/../../../../../../../etc/hostname"},
                 "chart/b is a symlink to '.', a folder that holds the link itself (a loop); remove the link",
                 id="dotdot-through-a-link-to-an-ancestor"),
]


@pytest.mark.parametrize(("files", "symlinks", "message"), REFUSED)
def test_an_export_refuses_a_link_that_leads_out_of_the_folder(
        tmp_path: pathlib.Path, files: dict[str, str], symlinks: dict[str, str], message: str) -> None:
    tree = _commit(tmp_path / "repo", files, symlinks)
    with pytest.raises(errors.SpecError) as caught:
        tree.materialize("chart")
    assert (caught.value.reason, str(caught.value)) == ("PathEscape", message)
    assert not (tmp_path / "state" / "trees").exists() or os.listdir(tmp_path / "state" / "trees") == []
    plain = fstree.FsTree(tmp_path / "repo")  # a plain folder is read in place: the same check
    with pytest.raises(errors.SpecError) as in_place:
        plain.materialize("chart")
    assert str(in_place.value) == message


RESOLVED = [
    pytest.param("chart/b/b/b/x", {"chart/b": "."}, "chart/x", id="dot-link"),
    pytest.param("chart/b/../x", {"chart/b": "sub/deeper"}, "chart/sub/x", id="dotdot-after-a-link"),
    pytest.param("chart/b/../../../../x", {"chart/b": "."}, None, id="dotdot-above-the-root"),
    pytest.param("chart/l", {"chart/l": "m", "chart/m": "l"}, None, id="link-loop"),
    pytest.param("chart/abs/x", {"chart/abs": "/etc"}, None, id="absolute-in-the-middle"),
]


@pytest.mark.parametrize(("path", "symlinks", "expected"), RESOLVED)
def test_a_path_is_resolved_link_by_link_as_the_file_system_would(
        tmp_path: pathlib.Path, path: str, symlinks: dict[str, str], expected: str | None) -> None:
    tree = _commit(tmp_path / "repo", {"chart/sub/deeper/keep": "k", "chart/x": "x"}, symlinks)
    assert links.resolve(tree, path) == expected
    assert links.resolve(fstree.FsTree(tmp_path / "repo"), path) == expected


def test_a_plain_folder_never_reads_through_a_symlinked_folder(tmp_path: pathlib.Path) -> None:
    (tmp_path / "outside" / "sub").mkdir(parents=True)
    (tmp_path / "outside" / "sub" / "cm.yaml").write_text("secret")
    (tmp_path / "repo" / "packs" / "p").mkdir(parents=True)
    (tmp_path / "repo" / "packs" / "p" / "ext").symlink_to(tmp_path / "outside")
    tree = fstree.FsTree(tmp_path / "repo")
    for call in (lambda: tree.read("packs/p/ext/sub/cm.yaml"), lambda: tree.listdir("packs/p/ext/sub"),
                 lambda: tree.listdir("packs/p/ext")):
        with pytest.raises(errors.SpecError) as caught:
            call()
        assert caught.value.reason == "PathEscape"
    with pytest.raises(errors.SpecError) as link:
        tree.read("packs/p/ext")
    assert str(link.value) == "packs/p/ext is a symlink; gitopsd reads the file it leads to, not the link"


def test_git_object_header_is_checked_before_a_large_file_is_read(tmp_path: pathlib.Path) -> None:
    repo = pygit2.init_repository(str(tmp_path / "bare"), bare=True)
    big = repo.create_blob(b"x" * (gittree.MAX_BLOB_BYTES + 1))
    builder = repo.TreeBuilder()
    builder.insert("big.yaml", big, pygit2.enums.FileMode.BLOB)
    who = pygit2.Signature("t", "t@example.com")
    commit = repo[repo.create_commit("refs/heads/main", who, who, "c", builder.write(), [])]
    tree = gittree.GitTree(repo, commit, ref="main", export_dir=tmp_path / "trees", description="t")
    assert tree.size("big.yaml") == gittree.MAX_BLOB_BYTES + 1
    with pytest.raises(errors.SpecError) as caught:
        tree.read("big.yaml")
    assert (caught.value.reason, str(caught.value)) == (
        "FileTooLarge",
        f"big.yaml: file is {gittree.MAX_BLOB_BYTES + 1} bytes, over the {gittree.MAX_BLOB_BYTES}-byte limit; "
        "keep large files out of the config repo")
