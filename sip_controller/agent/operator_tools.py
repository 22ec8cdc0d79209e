"""What an operator's own tool is given: the call it serves (``ToolCall``), and how a Python tool's
``package.module:function`` is found. Running the tools (with timeouts, over HTTP) is ``calls/tool_runner``."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """What a Python tool handler learns about the call it serves."""

    call_id: str
    profile: str
    caller: str | None
    dialed: str | None
    twilio_call_sid: str | None



PythonHandler = Callable[[dict[str, Any], ToolCall], Awaitable[Any]]
_loaded: dict[str, PythonHandler] = {}


def load_python_handler(path: str) -> PythonHandler:
    """``package.module:function`` -> the function (cached). Raises ValueError with a readable message."""
    if path in _loaded:
        return _loaded[path]
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    handler = getattr(module, attr, None)
    if handler is None or not callable(handler):
        raise ValueError(f"{module_name!r} has no function {attr!r}")
    _loaded[path] = handler
    return handler  # type: ignore[no-any-return]
