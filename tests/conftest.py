from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """Each test starts from structlog's defaults: a command run in-process before it (``sipctl demo`` configures
    logging at ``error``) must not filter out the info lines a later test captures with ``capture_logs``."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
