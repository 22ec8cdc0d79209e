"""The real stores of ``tests/state`` (SQLite, and PostgreSQL: skipped without a server, failing under CI=true) for
the call tests that run against a store (``test_hangups.py``)."""

from __future__ import annotations

from tests.state.conftest import backend, cluster, pg_url

__all__ = ["backend", "cluster", "pg_url"]
