"""The raw renderer: every ``*.yaml``/``*.yml`` under ``rawSource.path``, in name order.

Files are capped at ``MAX_PACK_BYTES`` as they are read (sizes from the tree before reading where
it knows them); symlinks to files inside the repo are followed, any other is refused.

Neighbours: ``adapters.renderinputs`` (the checks), ``adapters.boundedrun`` (the size cap),
``adapters.render`` (the renderers by category).
"""

from __future__ import annotations

from gitopsd import errors, ports
from gitopsd.adapters import boundedrun, links, renderinputs
from gitopsd.model import spec


class RawRenderer(renderinputs.ReadsSources):
    def render(self, tree: ports.Tree, build: spec.PackBuild) -> ports.Rendered:
        assert isinstance(build.source, spec.RawSource)
        root = build.source.path
        field = "rawSource.path"
        renderinputs.need_dir(tree, root, file=build.path, field=field)
        renderinputs.check_own(tree, build, root, field=field)
        renderinputs.check_links(tree, root, build=build, field=field)
        documents: list[tuple[str, bytes]] = []
        files: list[str] = []
        for sub, name, kind in links.walk(tree, root):
            if kind is not ports.EntryKind.DIR and name.endswith((".yaml", ".yml")) and sub != build.path:
                if kind is ports.EntryKind.LINK:
                    target = links.resolve(tree, sub)
                    if target is None or tree.kind(target) is not ports.EntryKind.FILE:
                        where = "outside the config repo" if target is None else "not a regular file"
                        raise errors.SpecError(
                            f"field {field!r}: {sub} is a symlink to "
                            f"{renderinputs.shown_name(tree.readlink(sub))!r}, {where}; "
                            "copy the file into the repo instead",
                            path=build.path,
                            reason="PathEscape",
                        )
                files.append(sub)
        total = 0
        for sub in sorted(files):
            target = sub
            if tree.kind(sub) is ports.EntryKind.LINK:
                target = links.resolve(tree, sub) or sub
            size = getattr(tree, "size", None)
            if size is not None and total + size(target) > boundedrun.MAX_PACK_BYTES:  # told before anything is read
                raise boundedrun.too_big(build, field, f"the files under {root or '.'} hold")
            data = tree.read(target)
            total += len(data)
            if total > boundedrun.MAX_PACK_BYTES:
                raise boundedrun.too_big(build, field, f"the files under {root or '.'} hold")
            documents.append((sub, data))
        return ports.Rendered(documents=tuple(documents), renderers=(("raw", "1"),))
