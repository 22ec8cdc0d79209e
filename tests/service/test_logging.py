"""The log pipeline: structlog and the standard library (uvicorn) render the same JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from sip_controller.service.logging import configure_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("info", "json", stream=out)
    try:
        yield out
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_structlog_and_uvicorn_lines_share_one_json_shape(stream: io.StringIO) -> None:
    structlog.get_logger("sip_controller.x").info("call.ended", call_id="rtc_1", ended_reason="agent_end_call")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    first, second = lines(stream)
    assert first["event"] == "call.ended"
    assert first["call_id"] == "rtc_1"
    assert second["event"] == "Started server process [42]"
    assert second["logger"] == "uvicorn.error"
    for line in (first, second):
        assert line["level"] == "info"
        assert str(line["timestamp"]).endswith("Z")


def test_access_lines_lose_their_query_string(stream: io.StringIO) -> None:
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/?token=secret-token-value", "1.1", 302
    )
    (line,) = lines(stream)
    assert "secret-token-value" not in json.dumps(line)
    assert '"GET / HTTP/1.1" 302' in str(line["event"])


def test_debug_lines_are_filtered_at_info(stream: io.StringIO) -> None:
    structlog.get_logger().debug("call.transcript", text="hello")
    logging.getLogger("uvicorn.error").debug("noise")
    assert lines(stream) == []


def test_library_lines_never_carry_credentials(stream: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").warning("< authorization: Bearer sk-live-123456")
    logging.getLogger("httpx").warning("sent %s", "Authorization=Bearer abc.def and whsec_QUJDREVGR0g=")
    text = stream.getvalue()
    assert "sk-live-123456" not in text
    assert "abc.def" not in text
    assert "QUJDREVGR0g" not in text
    assert text.count("[redacted]") == 3
