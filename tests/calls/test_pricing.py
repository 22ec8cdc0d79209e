"""Tests for sip_controller.calls.pricing: the cost arithmetic against the reference formula, worked by hand."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from sip_controller.calls.pricing import (
    DEFAULT_MODEL_PRICES,
    DEFAULT_TRANSCRIPTION_PRICES,
    ModelPrices,
    Pricing,
    TranscriptionPrices,
    response_cost,
    transcription_cost,
)
from sip_controller.calls.report import UsageTotals
from sip_controller.realtime.events import Usage

FULL = DEFAULT_MODEL_PRICES["gpt-realtime-2.1"]
MINI = DEFAULT_MODEL_PRICES["gpt-realtime-2.1-mini"]


def totals(wire: Mapping[str, Any]) -> UsageTotals:
    """Usage as it arrives in ``response.done``, summed the way the machine sums it."""
    t = UsageTotals()
    t.add(Usage.model_validate_json(json.dumps(wire)))
    return t


WIRE = {
    "total_tokens": 9000,
    "input_tokens": 7000,
    "output_tokens": 2000,
    "input_token_details": {
        "text_tokens": 3000,
        "audio_tokens": 4000,
        "cached_tokens": 2500,
        "cached_tokens_details": {"text_tokens": 2000, "audio_tokens": 500},
    },
    "output_token_details": {"text_tokens": 200, "audio_tokens": 1800},
}


def test_reference_prices() -> None:
    assert (
        ModelPrices(text_in=4.0, text_cached=0.4, text_out=24.0, audio_in=32.0, audio_cached=0.4, audio_out=64.0)
        == FULL
    )
    assert DEFAULT_MODEL_PRICES["gpt-realtime-1.5"].text_out == 16.0
    assert (
        ModelPrices(text_in=0.6, text_cached=0.06, text_out=2.4, audio_in=10.0, audio_cached=0.3, audio_out=20.0)
        == MINI
    )


def test_response_cost_matches_the_reference_formula() -> None:
    # (3000-2000)*4 + 2000*0.4 + (4000-500)*32 + 500*0.4 + 200*24 + 1800*64
    # = 4000 + 800 + 112000 + 200 + 4800 + 115200 = 237000  -> 0.237 USD
    assert response_cost(totals(WIRE), FULL) == pytest.approx(0.237)
    # mini: 1000*0.6 + 2000*0.06 + 3500*10 + 500*0.3 + 200*2.4 + 1800*20
    # = 600 + 120 + 35000 + 150 + 480 + 36000 = 72350 -> 0.07235 USD
    assert response_cost(totals(WIRE), MINI) == pytest.approx(0.07235)


def test_cached_tokens_are_priced_as_cached() -> None:
    all_cached = {
        "input_token_details": {
            "text_tokens": 10_000,
            "audio_tokens": 10_000,
            "cached_tokens_details": {"text_tokens": 10_000, "audio_tokens": 10_000},
        }
    }
    # 10000*0.4 + 10000*0.4 = 8000 -> 0.008, not 10000*4 + 10000*32 = 0.36
    assert response_cost(totals(all_cached), FULL) == pytest.approx(0.008)
    none_cached = {"input_token_details": {"text_tokens": 10_000, "audio_tokens": 10_000}}
    assert response_cost(totals(none_cached), FULL) == pytest.approx(0.36)


def test_missing_usage_fields_default_to_zero() -> None:
    assert response_cost(totals({}), FULL) == 0.0
    only_out = {"output_token_details": {"audio_tokens": 1_000_000}}
    assert response_cost(totals(only_out), FULL) == pytest.approx(64.0)


def test_costs_of_several_responses_add_up() -> None:
    t = totals(WIRE)
    t.add(Usage.model_validate_json(json.dumps(WIRE)))
    assert t.responses == 2
    assert response_cost(t, FULL) == pytest.approx(2 * 0.237)


def test_transcription_per_token() -> None:
    prices = DEFAULT_TRANSCRIPTION_PRICES["gpt-4o-transcribe"]
    # 1000*6 + 200*2.5 + 300*10 = 6000 + 500 + 3000 = 9500 -> 0.0095 USD; seconds are not billed per token
    assert transcription_cost(1000, 200, 300, 42.0, prices) == pytest.approx(0.0095)
    mini = DEFAULT_TRANSCRIPTION_PRICES["gpt-4o-mini-transcribe"]
    assert transcription_cost(1000, 200, 300, 0.0, mini) == pytest.approx(0.00475)


def test_transcription_per_minute() -> None:
    whisper = DEFAULT_TRANSCRIPTION_PRICES["whisper-1"]
    assert transcription_cost(0, 0, 0, 90.0, whisper) == pytest.approx(0.009)  # 1.5 min * 0.006
    assert transcription_cost(5000, 100, 100, 0.0, whisper) == 0.0
    both = TranscriptionPrices(audio_in=1.0, per_minute=0.01)
    assert transcription_cost(1_000_000, 0, 0, 30.0, both) == pytest.approx(1.005)


def test_pricing_config_overrides_and_unknown_models() -> None:
    custom = ModelPrices(text_in=1, text_cached=0, text_out=1, audio_in=1, audio_cached=0, audio_out=1)
    p = Pricing(models={"my-model": custom})
    assert p.for_model("my-model") == custom
    assert p.for_model("gpt-realtime-2.1") is None
    assert Pricing().for_model("gpt-realtime-2.1") == FULL
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ModelPrices(text_in=-1, text_cached=0, text_out=0, audio_in=0, audio_cached=0, audio_out=0)
