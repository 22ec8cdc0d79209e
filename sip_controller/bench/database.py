"""The stores the bench runs the controller on: the SQLite file (its default) and PostgreSQL when one answers.

PostgreSQL's URL comes from ``sipctl bench --database-url``, else ``SIPCTL_DATABASE_URL``, else
:data:`DEFAULT_URL` (the local server the tests use). Each scenario gets a throwaway schema of its own
(:func:`throwaway_schema`: created before, dropped with everything in it after), handed to the controllers as
``?search_path=<schema>`` on the URL, so the controllers' migrations land there. When no server answers, the
scenarios say ``"skipped": <reason>`` for PostgreSQL instead of failing the bench. The URL is a secret: reasons and
results name the server (:func:`describe`), never its user or password.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
ENV = "SIPCTL_DATABASE_URL"
CONNECT_TIMEOUT_S = 3.0
#: the stores, in the order the scenarios measure them
STORES = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Postgres:
    """Where PostgreSQL is, or why the bench runs without it (``url`` None, ``skipped`` the reason)."""

    url: str | None
    source: str
    skipped: str | None = None

    @property
    def server(self) -> str:
        return describe(self.url) if self.url else "-"


def describe(url: str) -> str:
    """``host:port/database``, without the user and password."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}/{parts.path.lstrip('/') or '(default)'}"
    except ValueError:
        return "(an unparsable URL)"


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``search_path=<schema>`` added to its query (asyncpg passes it on as a server setting)."""
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


async def find(explicit: str | None) -> Postgres:
    """The PostgreSQL to use: ``explicit``, else the environment's, else the default one; it must answer a
    connection within :data:`CONNECT_TIMEOUT_S`, or the result says why it is skipped."""
    if explicit:
        url, source = explicit, "--database-url"
    elif os.environ.get(ENV):
        url, source = os.environ[ENV], ENV
    else:
        url, source = DEFAULT_URL, "the default"
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        reason = f"no PostgreSQL answered at {describe(url)} ({source}): {type(exc).__name__}: {exc}"
        return Postgres(None, source, reason[:300])
    await conn.close()
    return Postgres(url, source)


@contextlib.asynccontextmanager
async def throwaway_schema(url: str, prefix: str = "sipctl_bench") -> AsyncIterator[str]:
    """A new schema on ``url``'s database for the body's controllers; yields the URL that selects it. The schema
    and everything in it is dropped afterwards (the controllers must be stopped by then)."""
    schema = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield with_search_path(url, schema)
        finally:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', timeout=30)
    finally:
        await admin.close()
