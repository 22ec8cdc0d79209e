"""What a call costs: per-model token prices (USD per 1M tokens) kept in config, and the arithmetic.

Defaults follow OpenAI's 2026 price list; prices change, so operators override them under ``pricing`` in the
config rather than waiting for a release.
"""

from __future__ import annotations

import re
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field


class UsageCounts(Protocol):
    """Summed ``response.done`` token counts (``report.UsageTotals``; a protocol, so this module imports nothing of
    the package and ``calls/legs.py`` may price a park for ``calls/report.py`` without an import circle)."""

    @property
    def input_text_tokens(self) -> int: ...

    @property
    def input_audio_tokens(self) -> int: ...

    @property
    def cached_text_tokens(self) -> int: ...

    @property
    def cached_audio_tokens(self) -> int: ...

    @property
    def output_text_tokens(self) -> int: ...

    @property
    def output_audio_tokens(self) -> int: ...


class ModelPrices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text_in: float = Field(ge=0)
    text_cached: float = Field(ge=0)
    text_out: float = Field(ge=0)
    audio_in: float = Field(ge=0)
    audio_cached: float = Field(ge=0)
    audio_out: float = Field(ge=0)


class TranscriptionPrices(BaseModel):
    """Input transcription is billed on its own: per token (gpt-4o*-transcribe) or per minute (whisper-1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    audio_in: float = Field(default=0.0, ge=0)
    text_in: float = Field(default=0.0, ge=0)
    text_out: float = Field(default=0.0, ge=0)
    per_minute: float = Field(default=0.0, ge=0)


#: input audio tokens a minute of caller audio costs, about ten a second: an approximation (OpenAI counts input audio
#: at roughly that rate; the exact count depends on the audio), used only to price a minute of per-token
#: transcription when a park is set against staying on hold (``transcription_per_minute``)
AUDIO_TOKENS_PER_MINUTE = 600


def transcription_per_minute(prices: TranscriptionPrices) -> float:
    """USD a minute of caller audio costs to transcribe: ``per_minute`` when set (whisper-1), else the audio input
    tokens of a minute (``AUDIO_TOKENS_PER_MINUTE``, an approximation) at ``audio_in`` USD per 1M tokens."""
    if prices.per_minute > 0:
        return prices.per_minute
    return prices.audio_in * AUDIO_TOKENS_PER_MINUTE / 1_000_000


class TwilioPrices(BaseModel):
    """Twilio's side of a parked call (#16), USD. The defaults are Twilio's published list prices: ``<Gather
    input="speech">`` speech recognition, 0.02 per 15 seconds of each round, and a SIP call (the leg that carries the
    call to OpenAI's SIP endpoint), 0.004 a minute. Volume discounts and price changes differ per account, so
    operators override them under ``pricing.twilio``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    speech_recognition_per_15s: float = Field(default=0.02, ge=0)
    sip_per_minute: float = Field(default=0.004, ge=0)


class ParkPrices(TwilioPrices):
    """What a park is priced with: Twilio's prices and the profile's input transcription (what the OpenAI session
    would have spent transcribing the hold, had the call stayed on it in hold mode)."""

    transcription: TranscriptionPrices = TranscriptionPrices()


_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_FULL = ModelPrices(text_in=4.0, text_cached=0.4, text_out=24.0, audio_in=32.0, audio_cached=0.4, audio_out=64.0)
_V1 = ModelPrices(text_in=4.0, text_cached=0.4, text_out=16.0, audio_in=32.0, audio_cached=0.4, audio_out=64.0)
_MINI = ModelPrices(text_in=0.6, text_cached=0.06, text_out=2.4, audio_in=10.0, audio_cached=0.3, audio_out=20.0)

DEFAULT_MODEL_PRICES: dict[str, ModelPrices] = {
    "gpt-realtime-2.1": _FULL,
    "gpt-realtime-2": _FULL,
    "gpt-realtime-1.5": _V1,
    "gpt-realtime": _V1,
    "gpt-realtime-2025-08-28": _V1,
    "gpt-realtime-2.1-mini": _MINI,
    "gpt-realtime-mini": _MINI,
    "gpt-realtime-mini-2025-12-15": _MINI,
}
DEFAULT_TRANSCRIPTION_PRICES: dict[str, TranscriptionPrices] = {
    "gpt-4o-transcribe": TranscriptionPrices(audio_in=6.0, text_in=2.5, text_out=10.0),
    "gpt-4o-mini-transcribe": TranscriptionPrices(audio_in=3.0, text_in=1.25, text_out=5.0),
    "whisper-1": TranscriptionPrices(per_minute=0.006),
}


class TextPrices(BaseModel):
    """A text model's prices (USD per 1M tokens) for the post-call analysis through the Responses API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    cached_input: float = Field(ge=0)
    output: float = Field(ge=0)


#: Text models for the post-call analysis (#17), USD per 1M tokens, standard tier. Source: OpenAI's pricing page,
#: https://developers.openai.com/api/docs/pricing ("Text tokens"), and each model's page under
#: https://developers.openai.com/api/docs/models/ (e.g. .../models/gpt-6-luna: input 0.10, cached input 0.01,
#: output 0.50; .../models/gpt-5-mini: 0.25, 0.025, 2.00; .../models/gpt-5-nano: 0.05, 0.005, 0.40), checked
#: 2026-12-02: these prices are the published ones. gpt-6-luna is the default analysis model; the others are
#: deprecated (``agent/analysis.py``: RETIRING_TEXT_MODELS, which check-config warns about): their prices hold until
#: they are shut down. Override under ``pricing.text`` when a price changes or for another model.
DEFAULT_TEXT_PRICES: dict[str, TextPrices] = {
    "gpt-6-luna": TextPrices(input=0.1, cached_input=0.01, output=0.5),
    "gpt-5": TextPrices(input=1.25, cached_input=0.125, output=10.0),
    "gpt-5-mini": TextPrices(input=0.25, cached_input=0.025, output=2.0),
    "gpt-5-nano": TextPrices(input=0.05, cached_input=0.005, output=0.4),
    "gpt-4.1": TextPrices(input=2.0, cached_input=0.5, output=8.0),
    "gpt-4.1-mini": TextPrices(input=0.4, cached_input=0.1, output=1.6),
    "gpt-4.1-nano": TextPrices(input=0.1, cached_input=0.025, output=0.4),
    "gpt-4o": TextPrices(input=2.5, cached_input=1.25, output=10.0),
    "gpt-4o-mini": TextPrices(input=0.15, cached_input=0.075, output=0.6),
}


class Pricing(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, ModelPrices] = Field(default_factory=lambda: dict(DEFAULT_MODEL_PRICES))
    transcription: dict[str, TranscriptionPrices] = Field(
        default_factory=lambda: dict(DEFAULT_TRANSCRIPTION_PRICES)
    )
    #: text models (the post-call analysis); a dated snapshot (``gpt-5-mini-2025-08-07``) takes its model's prices
    text: dict[str, TextPrices] = Field(default_factory=lambda: dict(DEFAULT_TEXT_PRICES))
    #: Twilio's prices, for the cost of a parked call against staying on hold (#16)
    twilio: TwilioPrices = TwilioPrices()

    def for_model(self, model: str) -> ModelPrices | None:
        return self.models.get(model)

    def for_text_model(self, model: str) -> TextPrices | None:
        """The prices of ``model``, or of the model a dated snapshot (``-YYYY-MM-DD``) belongs to, or None."""
        found = self.text.get(model)
        if found is None and _SNAPSHOT.search(model):
            found = self.text.get(_SNAPSHOT.sub("", model))
        return found

    def for_park(self, transcription_model: str | None) -> ParkPrices:
        """The prices a park of a profile transcribing with ``transcription_model`` is set against (no
        transcription cost when the profile has none, or its model has no prices)."""
        found = self.transcription.get(transcription_model) if transcription_model else None
        return ParkPrices(
            speech_recognition_per_15s=self.twilio.speech_recognition_per_15s,
            sip_per_minute=self.twilio.sip_per_minute,
            transcription=found or TranscriptionPrices(),
        )


def response_cost(usage: UsageCounts, prices: ModelPrices) -> float:
    """USD for summed ``response.done`` usage (cached tokens are part of the input counts)."""
    text_uncached = max(0, usage.input_text_tokens - usage.cached_text_tokens)
    audio_uncached = max(0, usage.input_audio_tokens - usage.cached_audio_tokens)
    total = (
        text_uncached * prices.text_in
        + usage.cached_text_tokens * prices.text_cached
        + audio_uncached * prices.audio_in
        + usage.cached_audio_tokens * prices.audio_cached
        + usage.output_text_tokens * prices.text_out
        + usage.output_audio_tokens * prices.audio_out
    )
    return total / 1_000_000


def transcription_cost(
    audio_tokens: int, text_tokens: int, output_tokens: int, seconds: float, prices: TranscriptionPrices
) -> float:
    per_token = audio_tokens * prices.audio_in + text_tokens * prices.text_in + output_tokens * prices.text_out
    return per_token / 1_000_000 + seconds / 60 * prices.per_minute


def text_cost(input_tokens: int, cached_tokens: int, output_tokens: int, prices: TextPrices) -> float:
    """USD for one Responses API answer's ``usage`` (cached tokens are part of ``input_tokens``; reasoning tokens
    are part of ``output_tokens``)."""
    uncached = max(0, input_tokens - cached_tokens)
    total = uncached * prices.input + min(cached_tokens, input_tokens) * prices.cached_input
    return (total + output_tokens * prices.output) / 1_000_000
