"""Versioned schema migrations: a small ordered-SQL runner.

Layout: one folder per backend, ``sqlite/`` and ``postgresql/``, each holding ``NNNN_what.sql`` files numbered
from ``0001``, each number once (shipped as package data). A change to the schema is a NEW file in BOTH folders with
the next free number; a file that was released is never edited (its checksum is recorded, and a database whose
applied migration differs from the file is refused). A gap in the numbers is allowed: work done in parallel takes
its numbers up front (a number held by a branch not merged yet), and a migration that lands later with a lower
number is applied when it arrives (migrations written in parallel do not depend on each other).

The database records what it has in ``schema_migrations`` (version, name, sha256 of the file, applied_at). That
table is the runner's own and the only DDL outside the files: the backends create it (:data:`BOOTSTRAP`) inside
the locked migration transaction. Each pending migration runs in its own transaction together with its row in
``schema_migrations``, so a failure leaves the database at the previous version. A database at a version newer
than the files this code ships is refused (:class:`~sip_controller.state.records.SchemaError`): an older
``sipctl`` must not write to a schema it does not know.

The backends apply them at start (``open_store``) and ``sipctl migrate`` applies them on demand; both take a lock
first (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock), so replicas starting together migrate once.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

from sip_controller.state.records import SchemaError

Dialect = Literal["sqlite", "postgresql"]

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

#: the runner's own table, created before anything else is read
BOOTSTRAP: dict[Dialect, str] = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
    "checksum TEXT NOT NULL, applied_at REAL NOT NULL)",
    "postgresql": "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
    "checksum text NOT NULL, applied_at double precision NOT NULL)",
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class Applied:
    """A row of ``schema_migrations``."""

    version: int
    name: str
    checksum: str


@cache
def available(dialect: Dialect) -> tuple[Migration, ...]:
    """The migrations this code ships for ``dialect``, in order. SchemaError when the files are misnumbered."""
    folder = resources.files(__package__).joinpath(dialect)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise SchemaError(f"migration file {dialect}/{entry.name}: name it NNNN_what.sql")
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: (m.version, m.name))
    for before, migration in itertools.pairwise(found):
        if migration.version == before.version:
            raise SchemaError(
                f"{dialect} migrations {before.version:04d}_{before.name}.sql and {migration.version:04d}_"
                f"{migration.name}.sql share a number: give the newer one the next free number"
            )
    if found and found[0].version < 1:
        raise SchemaError(f"{dialect} migrations are numbered from 0001 ({found[0].version:04d} is not)")
    return tuple(found)


def latest(dialect: Dialect) -> int:
    known = available(dialect)
    return known[-1].version if known else 0


def pending(applied: Iterable[Applied], known: tuple[Migration, ...]) -> list[Migration]:
    """The migrations still to apply, in order; SchemaError when the database is newer than ``known`` or an
    applied migration is not the file this code has."""
    done = {a.version: a for a in applied}
    newest = max(done, default=0)
    top = known[-1].version if known else 0
    if newest > top:
        raise SchemaError(
            f"the database is at schema version {newest}, newer than this sipctl knows (up to {top}): run the "
            "sipctl that migrated it (or a newer one), or point this one at another database"
        )
    for migration in known:
        row = done.get(migration.version)
        if row is not None and row.checksum != migration.checksum:
            raise SchemaError(
                f"schema migration {migration.version:04d} ({row.name}) applied to the database differs from "
                f"{migration.version:04d}_{migration.name}.sql in this sipctl: a released migration was edited; "
                "restore the file and add a new migration instead"
            )
    return [m for m in known if m.version not in done]


def failed(migration: Migration, exc: BaseException) -> str:
    """What to say when ``migration`` failed (it was rolled back)."""
    return (
        f"schema migration {migration.version:04d}_{migration.name} failed and was rolled back (the database stays "
        f"at version {migration.version - 1}): {type(exc).__name__}: {exc}"
    )


def sqlite_statements(sql: str) -> list[str]:
    """A script cut into its statements (``sqlite3.complete_statement`` decides where one ends), so that each can
    run inside one transaction (``executescript`` would commit first)."""
    statements: list[str] = []
    current = ""
    for line in sql.splitlines(keepends=True):
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        raise SchemaError(f"an unfinished statement at the end of a migration: {current.strip()[:60]!r}")
    return statements
