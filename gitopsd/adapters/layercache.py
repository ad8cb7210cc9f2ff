"""Artifact layers kept by digest, so that a plan can show the objects of a pack it did not render.

The compile cache (``compilecache``) keeps ClusterPacks without their artifact bytes, which live in
the registry once published. ``gitopsd plan`` publishes nothing, yet must show the objects of both
revisions of a changed pack; a pack rendered by an earlier plan (or by any pass of this process)
is served from here, by layer digest, instead of being rendered again. SQLite at
``<state-dir>/layers.db``; only a cache: unreadable, unwritable or corrupt, it is kept in memory.
"""

from __future__ import annotations

import hashlib
import pathlib
import sqlite3

import structlog

log = structlog.get_logger()
_SCHEMA = "CREATE TABLE IF NOT EXISTS layers (digest TEXT PRIMARY KEY, data BLOB NOT NULL)"


class LayerCache:
    def __init__(self, path: pathlib.Path, *, read_only: bool = False) -> None:
        self.path = path
        self._pending: dict[str, bytes] = {}
        self._db = self._open(path, read_only)

    def _open(self, path: pathlib.Path, read_only: bool) -> sqlite3.Connection:
        if not read_only:
            try:
                db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=OFF")
                db.execute(_SCHEMA)
                return db
            except (sqlite3.Error, OSError) as err:
                log.warning("layer cache unusable, keeping one in memory", path=str(path), error=str(err))
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.execute(_SCHEMA)
        return db

    def get(self, digest: str) -> bytes | None:
        """The layer with this digest, checked against it (a damaged row is a miss)."""
        data = self._pending.get(digest)
        if data is None:
            try:
                row = self._db.execute("SELECT data FROM layers WHERE digest=?", (digest,)).fetchone()
            except sqlite3.Error:
                return None
            if row is None:
                return None
            data = bytes(row[0])
        return data if f"sha256:{hashlib.sha256(data).hexdigest()}" == digest else None

    def put(self, digest: str, data: bytes) -> None:
        self._pending[digest] = data

    def flush(self) -> None:
        if not self._pending:
            return
        try:
            with self._db:
                self._db.executemany("INSERT OR IGNORE INTO layers(digest, data) VALUES (?, ?)", self._pending.items())
        except sqlite3.Error:
            pass  # a cache that cannot be written only costs a render next time
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        try:
            self._db.close()
        except sqlite3.Error:
            pass
