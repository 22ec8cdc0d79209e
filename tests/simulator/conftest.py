"""The scenario suite runs under the openai SDK referee (tests/sdk_referee.py): every server event and webhook the
simulator produces must be what OpenAI's own SDK accepts. The tests here play the client themselves, often badly
on purpose, so client events and REST bodies are judged only where a test asks (``@pytest.mark.sdk_referee``)."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.sdk_referee import MARKER_HELP, run_refereed


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from run_refereed(item, clients_by_default=False))
