"""Ids, durations and token usage the way the real service reports them."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

CALLER_SECONDS_PER_WORD = 0.3
ASSISTANT_SECONDS_PER_WORD = 0.3
ASSISTANT_MIN_SECONDS = 0.5
INPUT_AUDIO_TOKENS_PER_SECOND = 10  # 1 token / 100 ms
OUTPUT_AUDIO_TOKENS_PER_SECOND = 20  # 1 token / 50 ms
CACHE_BLOCK = 64


def new_id(prefix: str, nbytes: int = 12) -> str:
    return f"{prefix}{secrets.token_hex(nbytes)}"


def new_event_id() -> str:
    return new_id("event_", 10)


def word_count(text: str) -> int:
    return len(text.split())


def caller_seconds(text: str) -> float:
    """Nominal duration of a caller utterance."""
    return CALLER_SECONDS_PER_WORD * word_count(text)


def assistant_seconds(text: str) -> float:
    """Nominal duration of the assistant saying ``text``."""
    return max(ASSISTANT_MIN_SECONDS, ASSISTANT_SECONDS_PER_WORD * word_count(text))


def text_tokens(text: str) -> int:
    return max(1, round(len(text) / 4)) if text else 0


def trim_words(text: str, limit: int = 30) -> str:
    return " ".join(text.split()[:limit])


_QUOTED = re.compile(r'"([^"]{1,400})"')


def spoken_line(instructions: str) -> str:
    """What the scripted model says for free-form instructions: a double-quoted line in them if there is
    one (as in 'say exactly: "Hello!"'), else the instructions themselves, trimmed."""
    match = _QUOTED.search(instructions)
    return trim_words(match.group(1) if match else instructions)


class UsageMeter:
    """Plausible ``response.done`` usage: every response re-bills the conversation, mostly from cache."""

    def __init__(self) -> None:
        self._conversation_text = 0
        self._conversation_audio = 0
        self._previous_text_in = 0
        self._previous_audio_in = 0

    def caller_spoke(self, text: str, seconds: float) -> None:
        self._conversation_audio += round(seconds * INPUT_AUDIO_TOKENS_PER_SECOND)
        self._conversation_text += text_tokens(text)

    def tool_output(self, output: str) -> None:
        self._conversation_text += text_tokens(output) + 8

    def bill(self, session: Mapping[str, Any], *, out_text: str, out_audio_seconds: float) -> dict[str, Any]:
        instructions = session.get("instructions")
        tools = session.get("tools") or []
        text_in = (
            24
            + text_tokens(instructions if isinstance(instructions, str) else "")
            + text_tokens(json.dumps(tools))
            + self._conversation_text
        )
        audio_in = self._conversation_audio
        cached_text = min(text_in, self._previous_text_in // CACHE_BLOCK * CACHE_BLOCK)
        cached_audio = min(audio_in, self._previous_audio_in // CACHE_BLOCK * CACHE_BLOCK)
        out_audio = round(out_audio_seconds * OUTPUT_AUDIO_TOKENS_PER_SECOND)
        out_text_tokens = text_tokens(out_text)
        self._previous_text_in, self._previous_audio_in = text_in, audio_in
        self._conversation_text += out_text_tokens
        self._conversation_audio += out_audio
        input_tokens = text_in + audio_in
        output_tokens = out_text_tokens + out_audio
        return {
            "total_tokens": input_tokens + output_tokens,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": audio_in,
                "cached_tokens": cached_text + cached_audio,
                "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio},
            },
            "output_token_details": {"text_tokens": out_text_tokens, "audio_tokens": out_audio},
        }
