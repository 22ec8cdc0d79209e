"""Opening the store the settings ask for, and naming it without its secrets.

``SIPCTL_DATABASE_URL`` set (``Secrets.database_url``): PostgreSQL, shared by every replica. Unset: the SQLite file
``state.path``, for one process. Either way the schema is migrated on open unless ``migrate=False``. The URL
is a secret (it usually holds a password): nothing here logs or prints it; :func:`describe` names the server and
database only.
"""

from __future__ import annotations

import os
import secrets as random
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from sip_controller.config import Secrets, Settings
from sip_controller.state.postgres import PostgresStore
from sip_controller.state.sqlite import SQLiteStore
from sip_controller.state.store import Store


async def open_store(
    settings: Settings, secrets: Secrets, *, migrate: bool | None = True, clock: Callable[[], float] = time.time
) -> Store:
    """The store for these settings, open and at this code's schema: ``migrate`` True applies what is pending,
    False refuses a database that is behind, None leaves the schema alone (``sipctl migrate``). Raises
    :class:`~sip_controller.state.records.StoreError` (its subclass ``SchemaError`` for a schema this code cannot
    use) with a message that is safe to print. Close it with ``aclose()`` (or ``async with``)."""
    if secrets.database_url is not None:
        return await PostgresStore.open(
            secrets.database_url.get_secret_value(), migrate=migrate, clock=clock, pool_size=settings.state.pool_size
        )
    return await SQLiteStore.open(settings.state.path, migrate=migrate, clock=clock)


def describe(settings: Settings, secrets: Secrets) -> str:
    """Which store, for logs and ``sipctl migrate``: ``PostgreSQL db.internal:5432/sipctl`` or ``SQLite file
    sipctl-state.db``; never the user name or password."""
    if secrets.database_url is None:
        return f"SQLite file {settings.state.path}"
    try:
        parts = urlsplit(secrets.database_url.get_secret_value())
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "PostgreSQL (SIPCTL_DATABASE_URL)"
    database = parts.path.lstrip("/") or "(default database)"
    return f"PostgreSQL {host}:{port}/{database}"


def new_process_id() -> str:
    """An id for this process's lease: host name, pid and a random suffix, so that a restart (same host, maybe the
    same pid in a container) is a new process whose predecessor's calls it takes over like any survivor."""
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"{host}-{os.getpid()}-{random.token_hex(3)}"
