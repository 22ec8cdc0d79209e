"""The end-to-end suite runs under the openai SDK referee (tests/sdk_referee.py): every server event and webhook
the simulator produces, and every client event and REST body the controller sends, must be what OpenAI's own SDK
accepts. A test that makes the controller send a refused field on purpose (a session trap) names it:
``@pytest.mark.sdk_referee(allow=("temperature",))``."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Generator

import asyncpg
import pytest

from tests.sdk_referee import MARKER_HELP, run_refereed


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from run_refereed(item, clients_by_default=True))


@pytest.fixture
async def pg_url() -> str:
    """The test server's URL (``SIPCTL_TEST_DATABASE_URL``); skips without a reachable server, fails under CI=true."""
    url = os.environ.get("SIPCTL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = f"PostgreSQL not reachable at SIPCTL_TEST_DATABASE_URL ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests")
        pytest.skip(reason)
    await conn.close()
    return url


@pytest.fixture
async def pg_schema(pg_url: str) -> AsyncIterator[str]:
    """A database URL whose search path is a throwaway schema (the replicas' migrations land there)."""
    schema = f"sipctl_crash_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(pg_url, timeout=3)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield f"{pg_url}?search_path={schema}"
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
