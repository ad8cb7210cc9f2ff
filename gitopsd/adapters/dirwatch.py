"""Which entries of a few folders changed since the last look: Linux inotify, read without blocking.

The OCI layout (``ocilayout``) remembers which artifacts it found sound; between two passes it asks
this which of its blobs (and whether its ``index.json``) were written, truncated, replaced,
renamed, deleted or had their attributes changed, so that a pass checks again only what changed.
Nothing here blocks or runs in a thread: the kernel queues the events and ``changes()`` reads
what is queued.

Where it cannot tell (no inotify on this system, the per-user limit of inotify instances reached,
the kernel's event queue overflowed, a watched folder itself deleted, moved or unmounted),
``open`` returns None or ``changes()`` returns None, and the caller checks everything.
Writes through a memory mapping and changes made on another machine (a network file system)
raise no event: the layout's full check (every new process, every resync) covers those.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import struct
import sys
import weakref
from collections.abc import Sequence
from typing import Any

import structlog

log = structlog.get_logger()

# <sys/inotify.h>
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_UNMOUNT, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x2000, 0x4000, 0x8000
IN_ONLYDIR = 0x01000000
WATCHED = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
           | IN_DELETE_SELF | IN_MOVE_SELF)
LOST = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_Q_OVERFLOW | IN_IGNORED  # the watch cannot tell any more
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (the name follows, NUL-padded to len)

Event = tuple[int, int, str]  # (index of the folder in the list given to ``open``, mask, entry name)


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes, libc.inotify_init1.restype = [ctypes.c_int], ctypes.c_int
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC: list[Any] = []


class DirWatch:
    """The events of the folders given to ``open``, in the order they happened. Close it (or drop it:
    its file descriptor is closed when it is collected)."""

    def __init__(self, fd: int, folders: dict[int, int]) -> None:
        self._fd = fd
        self._folders = folders  # watch descriptor -> index of the folder
        self._lost = False
        self._close = weakref.finalize(self, os.close, fd)

    def changes(self) -> list[Event] | None:
        """The events queued since the last call; None when the watch cannot tell what changed (it
        stays so: open a new one)."""
        if self._lost or not self._close.alive:
            return None
        events: list[Event] = []
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return events
            except OSError as err:
                log.warning("folder watch unreadable, checking everything", error=str(err))
                self._lost = True
                return None
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _, size = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset:offset + size].rstrip(b"\0").decode("utf-8", "surrogateescape")
                offset += size
                if mask & LOST:
                    self._lost = True
                    return None
                folder = self._folders.get(wd)
                if folder is not None:
                    events.append((folder, mask, name))

    def close(self) -> None:
        self._close()


def open_watch(folders: Sequence[pathlib.Path]) -> DirWatch | None:
    """A watch of the entries of ``folders`` (not of their subfolders), or None where there can be none."""
    if not _LIBC:
        _LIBC.append(_libc())
    libc = _LIBC[0]
    if libc is None:
        return None
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        log.info("no folder watch, checking everything each pass", error=os.strerror(ctypes.get_errno()))
        return None
    watches: dict[int, int] = {}
    for index, folder in enumerate(folders):
        wd = libc.inotify_add_watch(fd, os.fsencode(folder), WATCHED | IN_ONLYDIR)
        if wd < 0:
            log.info("no folder watch, checking everything each pass", folder=str(folder),
                     error=os.strerror(ctypes.get_errno()))
            os.close(fd)
            return None
        watches[wd] = index
    return DirWatch(fd, watches)
