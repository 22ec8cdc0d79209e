"""The shapes of OpenAI's GA Realtime server events that the simulator sends: items, responses, status details,
rate limits. Pure builders; :mod:`.model` decides when each is sent.

Shapes follow OpenAI's API reference for the Realtime server events (the examples there) and the ``openai``
SDK's ``openai.types.realtime`` models, which the test suite uses to check every event the simulator sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .events import new_event_id
from .scenario import RateLimits

#: words per transcript delta (the real service streams a few tokens at a time)
DELTA_WORDS = 6
#: characters per function-call arguments delta
ARGUMENTS_DELTA_CHARS = 24

ItemStatus = Literal["completed", "incomplete", "in_progress"]


def server_event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event: ``type`` first (as OpenAI writes it), a fresh ``event_id``, then the fields."""
    return {"type": kind, "event_id": new_event_id(), **fields}


def text_chunks(text: str, words: int = DELTA_WORDS) -> list[str]:
    """``text`` in delta-sized pieces whose concatenation is ``text`` (one empty piece for empty text)."""
    parts = text.split(" ")
    chunks = [" ".join(parts[i : i + words]) for i in range(0, len(parts), words)]
    return [chunk + (" " if i < len(chunks) - 1 else "") for i, chunk in enumerate(chunks)] or [""]


def char_chunks(text: str, size: int = ARGUMENTS_DELTA_CHARS) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def assistant_message(item_id: str, status: ItemStatus, content: list[dict[str, Any]]) -> dict[str, Any]:
    """An assistant ``message`` item (``content`` empty while the model starts it)."""
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def output_content(audio: bool, text: str) -> dict[str, Any]:
    """A message's content part as items carry it: ``output_audio`` with its transcript, or ``output_text``."""
    return {"type": "output_audio", "transcript": text} if audio else {"type": "output_text", "text": text}


def streamed_part(audio: bool, text: str) -> dict[str, Any]:
    """The ``part`` of ``response.content_part.added/done``: ``{type: audio, transcript}`` or ``{type: text}``."""
    return {"type": "audio", "transcript": text} if audio else {"type": "text", "text": text}


def function_call(item_id: str, call_id: str, name: str, arguments: str, status: ItemStatus) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def user_audio(item_id: str, transcript: str | None) -> dict[str, Any]:
    """The user message a commit of the input audio buffer adds (its transcript, if any, comes later)."""
    return {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


def as_output_item(item: dict[str, Any]) -> dict[str, Any]:
    """An item as ``response.output_item.added/done`` show it (with ``object: realtime.item``)."""
    return {"id": item["id"], "object": "realtime.item", **{k: v for k, v in item.items() if k != "id"}}


#: ``status_details.error`` of a failed response, by code: the shape is documented (``type``, ``code``,
#: ``message``), the values are as users report them
FAILURE_ERRORS: dict[str, dict[str, Any]] = {
    "server_error": {
        "type": "server_error",
        "code": "server_error",
        "message": "The server had an error while processing your request. Sorry about that!",
    },
    "insufficient_quota": {
        "type": "insufficient_quota",
        "code": "insufficient_quota",
        "message": "You exceeded your current quota, please check your plan and billing details.",
    },
    "rate_limit_exceeded": {
        "type": "rate_limit_exceeded",
        "code": "rate_limit_exceeded",
        "message": "Rate limit reached for tokens per min (TPM). Please try again later.",
    },
}


def status_details(status: str, detail: str | None) -> dict[str, Any] | None:
    """``response.status_details``: ``null`` while in progress and when completed (as OpenAI's examples show);
    ``{type, reason}`` when cancelled or incomplete; ``{type, error}`` when failed."""
    if status in ("in_progress", "completed"):
        return None
    if status == "failed":
        return {"type": "failed", "error": dict(FAILURE_ERRORS[detail or "server_error"])}
    return {"type": status, "reason": detail}


def zero_usage() -> dict[str, Any]:
    """The usage of a response that failed before it produced anything."""
    return {
        "total_tokens": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "input_token_details": {
            "text_tokens": 0,
            "audio_tokens": 0,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": 0, "audio_tokens": 0},
    }


@dataclass
class RateLimitMeter:
    """The project's rate limits as one call sees them: each response takes a request and reserves output tokens
    as it starts (that is when ``rate_limits.updated`` is sent); when it is done, what it used replaces the
    reservation."""

    limits: RateLimits
    requests_left: int = 0
    tokens_left: int = 0

    def __post_init__(self) -> None:
        given = self.limits
        self.requests_left = given.requests if given.requests_remaining is None else given.requests_remaining
        self.tokens_left = given.tokens if given.tokens_remaining is None else given.tokens_remaining

    def start(self, reserve: int) -> list[dict[str, Any]]:
        """A response starts: the ``rate_limits`` list of the ``rate_limits.updated`` event."""
        self.requests_left = max(0, self.requests_left - 1)
        self.tokens_left = max(0, self.tokens_left - reserve)
        reset, limits = self.limits.reset_seconds, self.limits
        return [
            {"name": "requests", "limit": limits.requests, "remaining": self.requests_left, "reset_seconds": reset},
            {"name": "tokens", "limit": limits.tokens, "remaining": self.tokens_left, "reset_seconds": reset},
        ]

    def settle(self, reserved: int, used: int) -> None:
        """A response is done: give back its reservation, take what it used."""
        self.tokens_left = max(0, min(self.limits.tokens, self.tokens_left + reserved - used))
