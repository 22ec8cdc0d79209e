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
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)", re.DOTALL)
#: a line the model makes up from free-form instructions ("say a short goodbye…") is about this long
FREE_LINE_WORDS = 12


def spoken_line(instructions: str) -> str:
    """What the scripted model says for free-form instructions: a double-quoted line in them if there is
    one (as in 'say exactly: "Hello!"', at most 30 words), else a stand-in as long as the short line a model
    would say: the first sentence of the instructions, at most 12 words."""
    match = _QUOTED.search(instructions)
    if match:
        return trim_words(match.group(1))
    text = instructions.strip()
    sentence = _FIRST_SENTENCE.match(text)
    return trim_words(sentence.group(1) if sentence else text, FREE_LINE_WORDS)


def transcription_usage(session: Mapping[str, Any], text: str, seconds: float) -> dict[str, Any] | None:
    """The ``usage`` of ``conversation.item.input_audio_transcription.completed``, as the transcription model
    bills it: ``whisper-1`` by duration, the ``gpt-4o*-transcribe`` models by tokens. ``None`` when the session
    transcribes nothing."""
    audio = session.get("audio")
    inp = audio.get("input") if isinstance(audio, Mapping) else None
    transcription = inp.get("transcription") if isinstance(inp, Mapping) else None
    if not isinstance(transcription, Mapping):
        return None
    model = transcription.get("model")
    if model == "whisper-1":
        return {"type": "duration", "seconds": round(seconds, 3)}
    prompt = transcription.get("prompt")
    prompt_tokens = text_tokens(prompt) if isinstance(prompt, str) else 0
    audio_tokens = max(1, round(seconds * INPUT_AUDIO_TOKENS_PER_SECOND))
    out = max(1, text_tokens(text))
    return {
        "type": "tokens",
        "input_tokens": audio_tokens + prompt_tokens,
        "output_tokens": out,
        "total_tokens": audio_tokens + prompt_tokens + out,
        "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": audio_tokens},
    }


class UsageMeter:
    """Plausible ``response.done`` usage: every response re-bills the conversation, mostly from cache."""

    def __init__(self) -> None:
        self._conversation_text = 0
        self._conversation_audio = 0
        #: caller items still in the conversation: item_id -> (text tokens, audio tokens)
        self._items: dict[str, tuple[int, int]] = {}
        self._previous_text_in = 0
        self._previous_audio_in = 0
        self._previous_oob_text_in = 0

    def caller_spoke(self, text: str, seconds: float, item_id: str | None = None) -> None:
        audio = round(seconds * INPUT_AUDIO_TOKENS_PER_SECOND)
        words = text_tokens(text)
        self._conversation_audio += audio
        self._conversation_text += words
        if item_id is not None:
            self._items[item_id] = (words, audio)

    def forget(self, item_id: str) -> bool:
        """``conversation.item.delete``: the item no longer counts in later responses."""
        tokens = self._items.pop(item_id, None)
        if tokens is None:
            return False
        self._conversation_text -= tokens[0]
        self._conversation_audio -= tokens[1]
        return True

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
                "image_tokens": 0,
                "cached_tokens": cached_text + cached_audio,
                "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": out_text_tokens, "audio_tokens": out_audio},
        }

    def bill_out_of_band(self, *, prompt: str, out_text: str) -> dict[str, Any]:
        """A text-only out-of-band response (``conversation: "none"``): billed for its own short prompt (cached
        like any prefix: repeated checks share most of theirs) and a few text tokens out. It adds nothing to
        the conversation."""
        text_in = 24 + text_tokens(prompt)
        cached = min(text_in, self._previous_oob_text_in // CACHE_BLOCK * CACHE_BLOCK)
        self._previous_oob_text_in = text_in
        out = max(1, text_tokens(out_text))
        return {
            "total_tokens": text_in + out,
            "input_tokens": text_in,
            "output_tokens": out,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": 0,
                "image_tokens": 0,
                "cached_tokens": cached,
                "cached_tokens_details": {"text_tokens": cached, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": out, "audio_tokens": 0},
        }
