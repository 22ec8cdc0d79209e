"""The end-to-end suite runs under the openai SDK referee (tests/sdk_referee.py): every server event and webhook
the simulator produces, and every client event and REST body the controller sends, must be what OpenAI's own SDK
accepts. A test that makes the controller send a refused field on purpose (a session trap) names it:
``@pytest.mark.sdk_referee(allow=("temperature",))``."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.sdk_referee import MARKER_HELP, run_refereed


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from run_refereed(item, clients_by_default=True))
