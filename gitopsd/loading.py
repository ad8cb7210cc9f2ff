"""The load step of a pass: ``gitopsd.yaml``, ``clusters/`` and every PackBuild of ``packs/``.

What a pass reads here is kept by the tree ids it was read from (``memo.Listing``, ``memo.Loaded``):
the daemon's next pass reads again only what changed. When the tree id of ``packs/`` is the same
as the last pass's, the PackBuilds are the last pass's, without a look at any file; when it moved,
``packs/`` is listed again and only the pack folders whose tree id moved are looked into. Each
PackBuild is parsed once per blob id (``memo.specs``, and across processes the compile cache's
``RemembersSpecs``).

``gitopsd.reconcile`` runs :func:`load_specs` as its ``load`` step; the compile step
(``gitopsd.compiling``) takes the PackBuilds from ``PassState.builds``.
"""

from __future__ import annotations

import hashlib
import json

from gitopsd import errors, memo, packcompile, passstate, ports
from gitopsd.core import parse, yamlload
from gitopsd.model import change, spec

Env = passstate.Env
PassState = passstate.PassState

PACKBUILD_FILES = ("packbuild.yaml", "packbuild.yml")


def load_specs(env: Env, state: PassState) -> None:
    tree = state.tree
    assert tree is not None
    for top in ("gitopsd.yaml", "clusters", "packs"):
        if tree.kind(top) is ports.EntryKind.LINK:
            raise errors.SpecError(f"{top} is a symlink; gitopsd reads only real files and folders of the config repo: "
                                   f"replace the link with the {'file' if '.' in top else 'folder'} itself",
                                   path=top, reason="PathEscape")
    _settings(env, state, tree)
    if tree.kind("packs") is not ports.EntryKind.DIR:
        return
    listing = _listing(env, tree)
    loaded = env.memo.loaded
    if loaded is None or loaded.listing is not listing:
        loaded = env.memo.loaded = _load(env, tree, listing)
    state.loaded = loaded
    state.pack_errors.extend(listing.errors)
    state.pack_errors.extend(loaded.errors)
    state.protected_paths.update(loaded.protected_paths)
    if env.pack_filter is None:
        state.builds.extend(loaded.builds)
        return
    for build in loaded.builds:
        if env.pack_filter(build.base_pack_name):
            state.builds.append(build)
        else:
            state.unowned.append(build)


def _settings(env: Env, state: PassState, tree: ports.Tree) -> None:
    """``gitopsd.yaml`` and ``clusters/``, read again only when one of their tree ids moved."""
    ids = (tree.tree_id("gitopsd.yaml"), tree.tree_id("clusters"))
    known = env.memo.settings
    if known is not None and known[0] == ids:
        state.config, clusters = known[1], known[2]
        state.clusters.update(clusters)
        return
    has_config = tree.kind("gitopsd.yaml") is ports.EntryKind.FILE
    listed_clusters = tree.listdir("clusters") if tree.kind("clusters") is ports.EntryKind.DIR else []
    cluster_files = [f"clusters/{name}" for name, kind in listed_clusters
                     if kind is ports.EntryKind.FILE and name.endswith((".yaml", ".yml"))]
    files = ["gitopsd.yaml", *cluster_files] if has_config else cluster_files
    persisted = _persisted_specs(env, [(path, tree.tree_id(path)) for path in files], {})
    if has_config:
        raw, checked = _document(env, tree, "gitopsd.yaml", persisted)
        state.config = parse.parse_config(raw, env.schemas, checked=checked)
        _remember(env, tree, "gitopsd.yaml", raw, checked)
    for name, kind in listed_clusters:
        path = f"clusters/{name}"
        if kind is ports.EntryKind.LINK and name.endswith((".yaml", ".yml")):
            raise errors.SpecError(f"{path} is a symlink; a cluster file must be a regular file in clusters/: "
                                   "replace the link with the file itself", path=path, reason="PathEscape")
        if path not in cluster_files:
            continue
        raw, checked = _document(env, tree, path, persisted)
        cluster = parse.parse_cluster(raw, env.schemas, file=path, checked=checked)
        _remember(env, tree, path, raw, checked)
        if state.config.clusters is not None and cluster.name not in state.config.clusters:
            continue  # not in gitopsd.yaml's allow-list
        if cluster.name in state.clusters:
            raise errors.SpecError(
                f"cluster {cluster.name!r} is also defined in {state.clusters[cluster.name].path}; keep one",
                path=path,
            )
        state.clusters[cluster.name] = cluster
    env.memo.settings = (ids, state.config, dict(state.clusters))


def _listing(env: Env, tree: ports.Tree) -> memo.Listing:
    """The pack folders of ``packs/`` and their PackBuild files: the last pass's while the tree id of
    ``packs/`` is the same; else listed again, looking into a folder only when its tree id moved."""
    packs_id = tree.tree_id("packs")
    last = env.memo.listing
    if last is not None and last.packs_id == packs_id:
        return last
    if last is not None and not last.errors and isinstance(tree, ports.ComparesTrees):
        names = tree.changed_names("packs", last.packs_id)
        listing = _relisted(tree, last, packs_id, names) if names is not None else None
        if listing is not None:
            env.memo.listing = listing
            return listing
    listed = tree.listdir("packs")
    problems: list[change.PackError] = []
    submodules = tree.submodules if isinstance(tree, ports.HasSubmodules) else set()
    for sub in sorted(p for p in submodules if p.startswith("packs/") and p.count("/") == 1):
        name = sub.removeprefix("packs/")
        problems.append(change.PackError(
            path=sub, pack=name, reason="Submodule",
            message=f"{sub} is a Git submodule; gitopsd reads only files of the config repo: commit the pack's files "
                    "into the repo instead"))
    folders: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}
    found: list[tuple[str, str, str]] = []
    for name, kind in listed:
        if kind is ports.EntryKind.LINK and name.isprintable():
            path = f"packs/{name}"
            problems.append(change.PackError(
                path=path, pack=name, reason="PathEscape",
                message=f"{path} is a symlink to {tree.readlink(path)!r}; a pack folder must be a real folder in "
                        "packs/: replace the link with the folder itself"))
            continue
        if kind is not ports.EntryKind.DIR:
            continue
        if not name.isprintable() or "/" in name:
            shown = ascii(name)
            problems.append(change.PackError(
                path=f"packs/{shown}", pack=shown, reason="InvalidSpec",
                message=f"packs/{shown}: the folder name holds control characters; rename the folder "
                        "(letters, digits, '-', '_' and '.')"))
            continue
        folder = f"packs/{name}"
        folder_id = tree.tree_id(folder)
        known = last.folders.get(name) if last is not None else None
        if known is not None and known[0] == folder_id:
            files = known[1]
        else:
            files = tuple((path, tree.tree_id(path)) for path in (f"{folder}/{f}" for f in PACKBUILD_FILES)
                          if tree.kind(path) is not None)
        folders[name] = (folder_id, files)
        found.extend((name, path, blob) for path, blob in files)
    listing = memo.Listing(packs_id=packs_id, folders=folders, found=tuple(found), errors=tuple(problems))
    env.memo.listing = listing
    return listing


def _relisted(tree: ports.Tree, last: memo.Listing, packs_id: str, names: set[str]) -> memo.Listing | None:
    """``last`` with the folders ``names`` (the entries of ``packs/`` that changed) looked into again,
    without listing ``packs/``; None when one of them is anything but a folder or gone (a link, a
    submodule, an odd name: the full listing reports it)."""
    folders = dict(last.folders)
    added = False
    for name in sorted(names):
        folder = f"packs/{name}"
        try:
            kind = tree.kind(folder)
        except errors.GitopsdError:
            return None
        if kind is None or kind is ports.EntryKind.FILE:
            folders.pop(name, None)  # gone, or a file: no pack
            continue
        if kind is not ports.EntryKind.DIR or not name.isprintable() or "/" in name:
            return None
        files = tuple((path, tree.tree_id(path)) for path in (f"{folder}/{f}" for f in PACKBUILD_FILES)
                      if tree.kind(path) is not None)
        added = added or name not in folders
        folders[name] = (tree.tree_id(folder), files)
    if added:
        folders = dict(sorted(folders.items()))
    found = tuple((name, path, blob) for name, (_, files) in folders.items() for path, blob in files)
    return memo.Listing(packs_id=packs_id, folders=folders, found=found, errors=())


def _load(env: Env, tree: ports.Tree, listing: memo.Listing) -> memo.Loaded:
    """Every PackBuild of ``listing``, parsed or taken from the memo by its blob id."""
    # Only this pass's PackBuilds stay memoized: a daemon does not keep every version it ever parsed.
    earlier, env.memo.specs = env.memo.specs, {}
    persisted = _persisted_specs(env, [(path, blob) for _, path, blob in listing.found], earlier)
    builds: list[spec.PackBuild] = []
    problems: list[change.PackError] = []
    protected: set[str] = set()
    for name, path, blob in listing.found:
        try:
            build = _packbuild(env, tree, path, blob, earlier, persisted)
        except errors.GitopsdError as err:
            protected.add(path)
            problems.append(change.PackError(path=path, pack=name, reason=err.reason, message=str(err)))
            continue
        builds.append(build)
    return memo.Loaded(listing=listing, builds=tuple(builds), errors=tuple(problems), protected_paths=frozenset(protected))


def _spec_key(env: Env, path: str, blob: str) -> str:
    """What a parsed PackBuild depends on: its path (paths resolve against its folder), its bytes,
    the schemas and the compiler version."""
    return hashlib.sha256(f"{packcompile.COMPILER}|{env.schemas.registry_hash}|{path}|{blob}".encode()).hexdigest()


def _persisted_specs(env: Env, files: list[tuple[str, str]],
                     earlier: dict[tuple[str, str], spec.PackBuild | errors.GitopsdError]) -> dict[str, str]:
    """The validated documents a cache across processes holds for the PackBuilds (or gitopsd.yaml and
    cluster files) this process has not parsed yet (all of them, in a new process), by ``_spec_key``."""
    if not isinstance(env.cache, ports.RemembersSpecs):
        return {}
    keys = [_spec_key(env, path, blob) for path, blob in files if (path, blob) not in earlier]
    return env.cache.spec_documents(keys) if keys else {}


def _document(env: Env, tree: ports.Tree, path: str, persisted: dict[str, str]) -> tuple[object, bool]:
    """The document of gitopsd.yaml or a cluster file, and whether it passed its schema before: from
    the cache of validated documents when it holds this very file, else read from the tree."""
    text = persisted.get(_spec_key(env, path, tree.tree_id(path)))
    if text is not None:
        try:
            return json.loads(text), True
        except ValueError:
            pass  # a damaged cache entry: read the file itself
    return yamlload.load_one(tree.read(path), path), False


def _remember(env: Env, tree: ports.Tree, path: str, raw: object, checked: bool) -> None:
    """Keep a document that just passed its schema for later processes (see ``_document``)."""
    if not checked and isinstance(env.cache, ports.RemembersSpecs):
        env.cache.remember_spec_document(_spec_key(env, path, tree.tree_id(path)), json.dumps(raw, separators=(",", ":")))


def _packbuild(env: Env, tree: ports.Tree, path: str, blob: str,
               earlier: dict[tuple[str, str], spec.PackBuild | errors.GitopsdError],
               persisted: dict[str, str]) -> spec.PackBuild:
    key = (path, blob)
    known = earlier.get(key)
    if known is None:
        known = _parsed(env, tree, path, blob, persisted)
    env.memo.specs[key] = known
    if isinstance(known, errors.GitopsdError):
        raise known
    return known


def _parsed(env: Env, tree: ports.Tree, path: str, blob: str,
            persisted: dict[str, str]) -> spec.PackBuild | errors.GitopsdError:
    """Parse a PackBuild, or take its validated document from the cache across processes. Only
    documents that parsed are kept there: a broken one is read again, with its full error."""
    spec_key = _spec_key(env, path, blob)
    text = persisted.get(spec_key)
    if text is not None:
        try:
            return parse.parse_packbuild(json.loads(text), env.schemas, file=path, checked=True)
        except (ValueError, KeyError, TypeError, errors.GitopsdError):
            pass  # a damaged cache entry: parse the file itself
    try:
        if tree.kind(path) is not ports.EntryKind.FILE:
            raise errors.SpecError("a PackBuild must be a regular file, not a symlink", path=path, reason="PathEscape")
        raw = yamlload.load_one(tree.read(path), path)
        build = parse.parse_packbuild(raw, env.schemas, file=path)
    except errors.GitopsdError as err:
        return err
    if isinstance(env.cache, ports.RemembersSpecs):
        env.cache.remember_spec_document(spec_key, json.dumps(raw, separators=(",", ":")))
    return build
