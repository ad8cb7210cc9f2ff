"""Renderers: turn a PackBuild's sources into YAML bytes (design.md §Compile 1).

raw reads every ``*.yaml``/``*.yml`` under the path in name order; kustomize runs a ``kustomize``
binary or ``kubectl kustomize`` offline (remote bases are refused before it runs); helm renders
templates and ``crds/`` with the pinned Helm SDK of the ``helm`` extra, keeping hooks (with their
annotations), dropping test hooks and NOTES. ``gitopsd.core.compile`` takes the bytes from here.

Hostile sources are stopped before they cost anything, before they cost anything: every renderer refuses symlinks that
leave the repo and any read of another pack's folder (a pack reads its own folder and shared
folders outside ``packs/``); raw packs are capped at ``MAX_PACK_BYTES`` as they are read; the two
external renderers run as child processes under a watchdog (``run_bounded``) that kills them past
``RENDER_TIMEOUT``, ``RENDER_MAX_RSS`` resident memory or ``MAX_PACK_BYTES`` of output, so a
template or base that multiplies never takes the daemon down. Helm runs in a child process for
that reason (``python -c ... helm_child()``): the SDK is Go code loaded in-process, which no
timeout or memory limit could otherwise stop.

The two external renderers also offer ``prepare`` (``ports.Preparing``): the checks and the export
of the sources happen in the caller's thread, and the call it returns (the child process and the
reading of its answer) touches no Tree, so ``reconcile.compile_packs`` runs several at once.

This module maps each category to its renderer; each renderer and each concern has its module:
``renderinputs`` (input safety), ``renderraw``, ``renderkustomize``, ``renderhelm`` and
``boundedrun`` (bounded child processes).
"""

from __future__ import annotations

from gitopsd import ports
from gitopsd.adapters import renderhelm, renderkustomize, renderraw
from gitopsd.model import spec


def renderers() -> dict[spec.Category, ports.Renderer]:
    return {
        spec.Category.RAW: renderraw.RawRenderer(),
        spec.Category.KUSTOMIZE: renderkustomize.KustomizeRenderer(),
        spec.Category.HELM: renderhelm.HelmRenderer(),
    }
