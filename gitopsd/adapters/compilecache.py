"""Persistent compile cache: compiled packs keyed by the content ids of everything they read.

A key covers the PackBuild file, the tree ids of its source folders and the compiler version, so a
hit is exact. Only the ClusterPack and object identities are kept; artifact bytes live in the
registry (a miss for bytes recompiles). The CLI and the daemon share it through the state dir.
"""

from __future__ import annotations

import pathlib
import sqlite3
import time
from collections.abc import Collection, Sequence

import structlog

from gitopsd.core import codec
from gitopsd.model import pack

log = structlog.get_logger()
_SCHEMA = ("CREATE TABLE IF NOT EXISTS compiled (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
           "CREATE TABLE IF NOT EXISTS failed (key TEXT PRIMARY KEY, reason TEXT NOT NULL, message TEXT NOT NULL, "
           "at REAL NOT NULL);"
           "CREATE TABLE IF NOT EXISTS specs (key TEXT PRIMARY KEY, value TEXT NOT NULL, at REAL NOT NULL);"
           "CREATE TABLE IF NOT EXISTS verified (key TEXT PRIMARY KEY, at REAL NOT NULL);"
           "CREATE TABLE IF NOT EXISTS inputs (key TEXT PRIMARY KEY, value TEXT NOT NULL, at REAL NOT NULL)")
SPEC_TTL = 30 * 86400  # seconds a parsed PackBuild document is kept; a later read parses it again
VERIFIED_TTL = 30 * 86400  # seconds a passed signature check is kept; a later pass checks it again


def _discard(path: pathlib.Path) -> None:
    """Move a corrupt cache (and its WAL files) aside; a later pass compiles what it needs again."""
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        try:
            part.replace(path.with_name(f"{path.name}{suffix}.corrupt"))
        except OSError:
            continue


class SqliteCompileCache:
    """Only a cache: a corrupt ``cache.db`` is moved away and made again, and a state dir where it
    cannot be written (read-only, full) gets a cache in memory for the process. Never fatal."""

    def __init__(self, path: pathlib.Path, *, read_only: bool = False) -> None:
        self.path = path
        self.rebuilt = False
        self._db = self._open(path, read_only)
        self._memory: dict[str, pack.CompiledPack] = {}
        self._used: set[str] = set()  # keys asked for or stored since the last flush
        self._pending: list[tuple[str, str]] = []
        self._failed: list[tuple[str, str, str, float]] = []  # render failures to remember: key, reason, message, time
        self._specs: list[tuple[str, str, float]] = []  # validated PackBuild documents to keep: key, JSON, time
        self._inputs: list[tuple[str, str, float]] = []  # renderer input folders to keep: key, JSON, time

    def _open(self, path: pathlib.Path, read_only: bool) -> sqlite3.Connection:
        if not read_only:
            for attempt in range(2):
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=OFF")
                    db.executescript(_SCHEMA)
                    db.execute("SELECT count(*) FROM compiled WHERE key=''").fetchone()
                    return db
                except (sqlite3.Error, OSError) as err:
                    # not a database, malformed, or a schema this cache cannot use (no such table): made again
                    code = (getattr(err, "sqlite_errorcode", None) or 0) & 0xFF
                    corrupt = code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_ERROR)
                    if attempt or not corrupt:
                        log.warning("compile cache unusable, keeping one in memory", path=str(path), error=str(err))
                        break
                    log.warning("compile cache corrupt, made again", path=str(path), error=str(err))
                    _discard(path)
                    self.rebuilt = True
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.executescript(_SCHEMA)
        return db

    def get(self, key: str) -> pack.CompiledPack | None:
        self._used.add(key)
        hit = self._memory.get(key)
        if hit is not None:
            return hit
        try:
            row = self._db.execute("SELECT value FROM compiled WHERE key=?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        if row is None:
            return None
        try:
            hit = codec.compiled_from_text(row[0])
        except (ValueError, KeyError):
            return None
        self._memory[key] = hit
        return hit

    def failure(self, key: str, max_age: float) -> tuple[str, str] | None:
        """(reason, message) of a render of exactly these inputs that failed within ``max_age`` seconds."""
        try:
            row = self._db.execute("SELECT reason, message FROM failed WHERE key=? AND at>=?",
                                   (key, time.time() - max_age)).fetchone()
        except sqlite3.Error:
            return None
        return (str(row[0]), str(row[1])) if row else None

    def remember_failure(self, key: str, reason: str, message: str) -> None:
        self._failed.append((key, reason, message, time.time()))

    def spec_documents(self, keys: Sequence[str]) -> dict[str, str]:
        """The validated PackBuild documents (JSON text) kept under these keys, in batches."""
        return self._values("specs", keys)

    def input_folders(self, keys: Sequence[str]) -> dict[str, str]:
        """The renderer input folders and their tree ids (JSON text) kept under these keys, in batches."""
        return self._values("inputs", keys)

    def remember_input_folders(self, key: str, text: str) -> None:
        self._inputs.append((key, text, time.time()))

    def _values(self, table: str, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        try:
            for start in range(0, len(keys), 500):
                batch = keys[start:start + 500]
                marks = ",".join("?" * len(batch))
                found.update(self._db.execute(f"SELECT key, value FROM {table} WHERE key IN ({marks})", batch))
        except sqlite3.Error:
            return {}
        return found

    def verified(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` whose signature check passed before (``reconcile.verify_signatures``)."""
        found: set[str] = set()
        try:
            for start in range(0, len(keys), 500):
                batch = keys[start:start + 500]
                marks = ",".join("?" * len(batch))
                found.update(k for (k,) in self._db.execute(f"SELECT key FROM verified WHERE key IN ({marks})", batch))
        except sqlite3.Error:
            return set()
        return found

    def remember_verified(self, keys: Sequence[str]) -> None:
        """Keep passed signature checks now (the compile step's flush has happened by then)."""
        if not keys:
            return
        now = time.time()
        try:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO verified(key, at) VALUES (?, ?)", [(k, now) for k in keys])
                self._db.execute("DELETE FROM verified WHERE at < ?", (now - VERIFIED_TTL,))
        except sqlite3.Error:
            pass  # only a cache: the next process checks again

    def remember_spec_document(self, key: str, text: str) -> None:
        self._specs.append((key, text, time.time()))

    def put(self, key: str, compiled: pack.CompiledPack) -> None:
        slim = compiled.without_artifact()
        self._used.add(key)
        self._memory[key] = slim
        self._pending.append((key, codec.compiled_to_text(slim)))

    def flush(self) -> None:
        """Write what was stored to disk, and keep in memory only the entries used since the last
        flush (the end of a compile step): a daemon does not hold every version it ever compiled."""
        self.retain(self._used)

    def retain(self, keys: Collection[str]) -> None:
        """``flush``, keeping in memory only the entries of ``keys``: those a compile step that looked
        nothing up uses (``ports.RetainsEntries``)."""
        if len(self._memory) > len(keys):
            self._memory = {k: v for k, v in self._memory.items() if k in keys}
        self._used = set()
        if not self._pending and not self._failed and not self._specs and not self._inputs:
            return
        try:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO compiled(key, value) VALUES (?, ?)", self._pending)
                self._db.executemany("INSERT OR REPLACE INTO failed(key, reason, message, at) VALUES (?, ?, ?, ?)",
                                     self._failed)
                self._db.execute("DELETE FROM failed WHERE at < ?", (time.time() - 7 * 86400,))
                if self._specs:
                    self._db.executemany("INSERT OR REPLACE INTO specs(key, value, at) VALUES (?, ?, ?)", self._specs)
                    self._db.execute("DELETE FROM specs WHERE at < ?", (time.time() - SPEC_TTL,))
                if self._inputs:
                    self._db.executemany("INSERT OR REPLACE INTO inputs(key, value, at) VALUES (?, ?, ?)", self._inputs)
                    self._db.execute("DELETE FROM inputs WHERE at < ?", (time.time() - SPEC_TTL,))
        except sqlite3.Error:
            pass  # a cache that cannot be written only costs a recompile next time
        self._pending.clear()
        self._failed.clear()
        self._specs.clear()
        self._inputs.clear()

    def close(self) -> None:
        self.flush()
        try:
            self._db.close()
        except sqlite3.Error:
            pass
