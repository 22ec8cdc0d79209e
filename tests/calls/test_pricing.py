"""Tests for sip_controller.calls.pricing: the cost arithmetic against the reference formula, worked by hand."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import ValidationError

from sip_controller.calls.legs import spell_costs
from sip_controller.calls.pricing import (
    AUDIO_TOKENS_PER_MINUTE,
    DEFAULT_MODEL_PRICES,
    DEFAULT_TEXT_PRICES,
    DEFAULT_TRANSCRIPTION_PRICES,
    ModelPrices,
    ParkPrices,
    Pricing,
    TranscriptionPrices,
    TwilioPrices,
    response_cost,
    transcription_cost,
    transcription_per_minute,
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


# ---- a park on Twilio against staying on hold (#16) ---------------------------------------------------------


def test_twilio_list_prices_and_overrides() -> None:
    assert Pricing().twilio == TwilioPrices(speech_recognition_per_15s=0.02, sip_per_minute=0.004)
    custom = Pricing.model_validate({"twilio": {"sip_per_minute": 0.01}})
    assert custom.twilio == TwilioPrices(speech_recognition_per_15s=0.02, sip_per_minute=0.01)
    with pytest.raises(ValidationError):
        TwilioPrices.model_validate({"speech_per_15s": 0.01})
    with pytest.raises(ValidationError):
        TwilioPrices(sip_per_minute=-0.1)


def test_park_prices_of_a_profile() -> None:
    pricing = Pricing(twilio=TwilioPrices(speech_recognition_per_15s=0.03, sip_per_minute=0.005))
    park = pricing.for_park("whisper-1")
    assert (park.speech_recognition_per_15s, park.sip_per_minute) == (0.03, 0.005)
    assert park.transcription == DEFAULT_TRANSCRIPTION_PRICES["whisper-1"]
    assert pricing.for_park(None).transcription == TranscriptionPrices()
    assert pricing.for_park("no-such-model").transcription == TranscriptionPrices()


def test_transcription_per_minute_per_minute_or_per_token() -> None:
    assert AUDIO_TOKENS_PER_MINUTE == 600  # about ten input audio tokens a second
    assert transcription_per_minute(DEFAULT_TRANSCRIPTION_PRICES["whisper-1"]) == 0.006
    # 600 tokens a minute at 6 USD per 1M tokens
    assert transcription_per_minute(DEFAULT_TRANSCRIPTION_PRICES["gpt-4o-transcribe"]) == pytest.approx(0.0036)
    assert transcription_per_minute(DEFAULT_TRANSCRIPTION_PRICES["gpt-4o-mini-transcribe"]) == pytest.approx(0.0018)
    assert transcription_per_minute(TranscriptionPrices(audio_in=6.0, per_minute=0.01)) == 0.01  # per minute wins
    assert transcription_per_minute(TranscriptionPrices()) == 0.0


TWILIO_ONLY = ParkPrices()


@pytest.mark.parametrize(
    ("parked_s", "listens", "increments"),
    [
        (0.0, 0, 0),
        (15.0, 1, 1),
        (15.001, 1, 2),
        (30.0000001, 1, 2),  # to the millisecond: float noise is not another increment
        (31.0, 1, 3),
        (600.0, 0, 40),
        (600.0, 20, 40),
        (20.0, 5, 5),  # five short rounds: each bills at least one increment
        (-3.0, 0, 0),
    ],
)
def test_listening_is_billed_in_15_second_increments(parked_s: float, listens: int, increments: int) -> None:
    costs = spell_costs(parked_s, listens=listens, check_usage=None, prices=TWILIO_ONLY, check_model_prices=None)
    assert costs["listen_cost_usd"] == pytest.approx(increments * 0.02)


def test_hold_mode_cost_per_minute_or_per_token_transcription() -> None:
    def hold_mode(transcription: TranscriptionPrices) -> float:
        prices = ParkPrices(transcription=transcription)
        return spell_costs(600.0, listens=0, check_usage=None, prices=prices, check_model_prices=None)[
            "hold_mode_cost_usd"
        ]

    assert hold_mode(TranscriptionPrices()) == pytest.approx(0.04)  # 10 min of Twilio's SIP leg
    assert hold_mode(DEFAULT_TRANSCRIPTION_PRICES["whisper-1"]) == pytest.approx(0.1)  # 10 * (0.006 + 0.004)
    assert hold_mode(DEFAULT_TRANSCRIPTION_PRICES["gpt-4o-transcribe"]) == pytest.approx(0.076)  # 10 * 0.0076
    assert hold_mode(DEFAULT_TRANSCRIPTION_PRICES["gpt-4o-mini-transcribe"]) == pytest.approx(0.058)


def test_check_cost_from_the_responses_usage() -> None:
    luna = DEFAULT_TEXT_PRICES["gpt-6-luna"]
    usage = {"input_tokens": 10_000, "cached_tokens": 4_000, "output_tokens": 1_000}
    costs = spell_costs(60.0, listens=4, check_usage=usage, prices=TWILIO_ONLY, check_model_prices=luna)
    # 6000 * 0.1 + 4000 * 0.01 + 1000 * 0.5 = 1140 per 1M -> 0.00114 USD
    assert costs == {"listen_cost_usd": 0.08, "check_cost_usd": 0.00114, "hold_mode_cost_usd": 0.004}
    uncached = spell_costs(
        60.0, listens=4, check_usage={"input_tokens": 1000, "output_tokens": 100}, prices=TWILIO_ONLY,
        check_model_prices=luna,
    )  # fmt: skip
    assert uncached["check_cost_usd"] == pytest.approx(0.00015)
    assert spell_costs(60.0, listens=4, check_usage=usage, prices=TWILIO_ONLY, check_model_prices=None)[
        "check_cost_usd"
    ] == 0.0
    assert spell_costs(60.0, listens=4, check_usage=None, prices=TWILIO_ONLY, check_model_prices=luna)[
        "check_cost_usd"
    ] == 0.0


def test_a_park_can_cost_more_than_holding() -> None:
    """Short parks with many rounds cost more in speech recognition than minutes of hold mode would."""
    costs = spell_costs(60.0, listens=10, check_usage=None, prices=TWILIO_ONLY, check_model_prices=None)
    assert costs["listen_cost_usd"] > costs["hold_mode_cost_usd"]
