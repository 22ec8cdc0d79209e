"""Run a test module under both event loops the controller meets: asyncio's own and uvloop (``sipctl serve``).

In a test module: ``anyio_backend = both_loops`` (tests/ is on sys.path when pytest runs them)."""

from __future__ import annotations

import pytest


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def both_loops(request: pytest.FixtureRequest) -> object:
    return request.param
