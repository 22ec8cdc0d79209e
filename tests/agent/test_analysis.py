"""The ``analysis`` block (#17): the schema against the JSON Schema meta-schema and OpenAI's strict structured-output
subset, the model name, and what ``check-config`` says about them (the field path, the bad value, the fix)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from sip_controller.agent import preflight
from sip_controller.agent.analysis import (
    DEFAULT_ANALYSIS_MODEL,
    RETIRING_TEXT_MODELS,
    AnalysisSettings,
    CallAnalysis,
    model_name_problem,
    model_retirement,
    schema_problems,
)
from sip_controller.calls.pricing import Pricing, text_cost

GOOD: dict[str, Any] = {
    "type": "object",
    "properties": {
        "appointment_date": {"type": ["string", "null"], "format": "date"},
        "callback_requested": {"type": "boolean"},
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}},
                "required": ["sku"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["appointment_date", "callback_requested", "sentiment", "items"],
    "additionalProperties": False,
}
BASE = "profiles.p.analysis.schema"


def messages(schema: dict[str, Any]) -> list[str]:
    return [str(f) for f in schema_problems(schema, BASE)]


def test_a_schema_in_the_subset_has_no_problem() -> None:
    assert messages(GOOD) == []


def test_invalid_json_schema_is_refused_by_the_meta_schema_at_its_path() -> None:
    bad = {**GOOD, "properties": {**GOOD["properties"], "sentiment": {"type": "feeling"}}}
    [problem] = messages(bad)
    assert problem.startswith(f"{BASE}.properties.sentiment.type: not valid JSON Schema:")
    assert "'feeling'" in problem
    assert "draft 2020-12 meta-schema" in problem


def test_the_root_must_be_an_object() -> None:
    problems = messages({"type": "array", "items": {"type": "string"}})
    root = f"{BASE}.type: the root of a structured output must be an object schema (got 'array')"
    assert problems[0].startswith(root)


def test_additional_properties_must_be_false_and_every_property_required() -> None:
    nested = dict(GOOD["properties"]["items"]["items"])
    nested.pop("additionalProperties")
    bad = {
        **GOOD,
        "required": ["sentiment"],
        "properties": {**GOOD["properties"], "items": {"type": "array", "items": nested}},
    }
    problems = messages(bad)
    assert (
        f"{BASE}.required: every property must be required in a strict structured output; "
        "['appointment_date', 'callback_requested', 'items'] are not: add them to required"
    ) in "\n".join(problems)
    assert any(
        p.startswith(f"{BASE}.properties.items.items.additionalProperties: must be false in a strict structured "
                     "output (got 'nothing'); set additionalProperties: false")
        for p in problems
    )  # fmt: skip


def test_unsupported_keywords_and_formats_are_named_with_their_value() -> None:
    bad = {
        **GOOD,
        "properties": {
            **GOOD["properties"],
            "sentiment": {"type": "string", "minLength": 3, "format": "color"},
        },
    }
    problems = messages(bad)
    assert any(
        p.startswith(f"{BASE}.properties.sentiment.minLength: 'minLength' (set to 3) is not supported")
        for p in problems
    )
    assert any(
        p.startswith(f"{BASE}.properties.sentiment.format: 'color' is not a format structured outputs support")
        for p in problems
    )


def test_model_names() -> None:
    assert model_name_problem("gpt-5-mini") is None
    assert model_name_problem("ft:gpt-4.1-mini:acme::abc123") is None
    assert "not a text model" in str(model_name_problem("gpt-realtime-2.1"))
    assert "not a model name" in str(model_name_problem("GPT 5"))
    with pytest.raises(ValidationError, match="not a text model"):
        AnalysisSettings(model="gpt-4o-mini-transcribe")


def test_the_block_reads_schema_and_refuses_unknown_keys() -> None:
    block = CallAnalysis.model_validate({"schema": GOOD, "success_criteria": "an appointment was booked"})
    assert block.fields_schema == GOOD
    with pytest.raises(ValidationError):
        CallAnalysis.model_validate({"schema": GOOD, "prompt": "x"})


def test_check_config_reports_the_analysis_block(tmp_path: Path) -> None:
    bad_schema = {**GOOD, "additionalProperties": True}
    config = {
        "profiles": {
            "default": {"analysis": {"schema": GOOD}},
            "sales": {"analysis": {"schema": bad_schema, "model": "gpt-realtime"}},
        }
    }
    path = tmp_path / "sipctl.yaml"
    path.write_text(yaml.safe_dump(config))
    result = preflight.validate(path)
    assert result.errors == [
        "profiles.sales.analysis.model: 'gpt-realtime' is not a text model: the analysis goes to the Responses API; "
        "use a text model such as gpt-6-luna",
        "profiles.sales.analysis.schema.additionalProperties: must be false in a strict structured output (got "
        "True); set additionalProperties: false",
    ]


def test_text_cost_from_usage_and_the_price_table() -> None:
    pricing = Pricing()
    prices = pricing.for_text_model("gpt-5-mini-2025-08-07")  # a dated snapshot takes its model's prices
    assert prices == pricing.for_text_model("gpt-5-mini")
    assert prices is not None
    # 10,000 input tokens of which 2,000 cached, 1,000 output: 8000 * 0.25 + 2000 * 0.025 + 1000 * 2.0 per 1M
    assert text_cost(10_000, 2_000, 1_000, prices) == pytest.approx((2000 + 50 + 2000) / 1_000_000)
    assert pricing.for_text_model("unknown-model") is None


# ---- the model: a current one by default, and check-config on deprecated ones -----------------------------------

TODAY = date(2026, 12, 2)


def test_the_default_model_is_current_priced_and_a_text_model() -> None:
    assert DEFAULT_ANALYSIS_MODEL == "gpt-6-luna"
    assert AnalysisSettings().model == DEFAULT_ANALYSIS_MODEL
    assert model_name_problem(DEFAULT_ANALYSIS_MODEL) is None
    assert model_retirement(DEFAULT_ANALYSIS_MODEL, TODAY) is None
    assert DEFAULT_ANALYSIS_MODEL not in RETIRING_TEXT_MODELS
    assert Pricing().for_text_model(DEFAULT_ANALYSIS_MODEL) is not None
    assert all(replacement not in RETIRING_TEXT_MODELS for _, replacement in RETIRING_TEXT_MODELS.values())


def test_a_deprecated_model_is_a_warning_until_its_shutdown_and_an_error_from_then_on() -> None:
    assert model_retirement("gpt-5-mini", TODAY) == (
        "warning", "'gpt-5-mini' shuts down on 2026-12-11; move to gpt-6.1-terra (or gpt-6-luna, the default)"
    )  # fmt: skip
    assert model_retirement("gpt-5-mini-2025-08-07", date(2026, 12, 11)) == (
        "error", "'gpt-5-mini-2025-08-07' was shut down on 2026-12-11; use gpt-6.1-terra (or gpt-6-luna, the default)"
    )  # fmt: skip
    assert model_retirement("gpt-4.1-nano", TODAY) is not None
    assert model_retirement("gpt-4.1-nano", TODAY)[0] == "error"  # type: ignore[index]
    assert model_retirement("gpt-4o-mini", TODAY) == (
        "warning", "'gpt-4o-mini' shuts down on 2027-01-14; move to gpt-6-luna"
    )  # fmt: skip
    tuned = model_retirement("ft:gpt-4.1-mini-2025-04-14:acme::abc123", date(2027, 1, 14))
    assert tuned == (
        "error",
        "'ft:gpt-4.1-mini-2025-04-14:acme::abc123' (fine-tuned from gpt-4.1-mini-2025-04-14, on its schedule) was "
        "shut down on 2027-01-14; use gpt-6-luna",
    )
    assert model_retirement("gpt-6.1-terra", TODAY) is None


def _validate(tmp_path: Path, config: dict[str, Any], today: date) -> preflight.Validation:
    path = tmp_path / "sipctl.yaml"
    path.write_text(yaml.safe_dump(config))
    return preflight.validate(path, today=today)


def test_check_config_warns_about_a_profile_s_deprecated_model_and_refuses_it_once_shut_down(tmp_path: Path) -> None:
    config = {"profiles": {"default": {"analysis": {"model": "gpt-5-mini"}}}}
    before = _validate(tmp_path, config, TODAY)
    assert before.errors == []
    assert [str(w) for w in before.warnings if w.path.endswith("analysis.model")] == [
        "profiles.default.analysis.model: 'gpt-5-mini' shuts down on 2026-12-11; move to gpt-6.1-terra (or "
        "gpt-6-luna, the default)"
    ]
    after = _validate(tmp_path, config, date(2026, 12, 11))
    assert after.errors == [
        "profiles.default.analysis.model: 'gpt-5-mini' was shut down on 2026-12-11; use gpt-6.1-terra (or "
        "gpt-6-luna, the default)"
    ]
    assert after.settings is None  # serve refuses to start with it


def test_check_config_checks_the_global_model_where_an_analysis_uses_it(tmp_path: Path) -> None:
    used = {"analysis": {"model": "gpt-4.1-mini"}, "profiles": {"default": {"analysis": {}}}}
    warned = _validate(tmp_path, used, TODAY)
    assert warned.errors == []
    assert [str(w) for w in warned.warnings if w.path == "analysis.model"] == [
        "analysis.model: 'gpt-4.1-mini' shuts down on 2027-01-14; move to gpt-6-luna (the model of "
        "every analysis block that names none)"
    ]
    assert _validate(tmp_path, used, date(2027, 1, 14)).errors[0].startswith("analysis.model: 'gpt-4.1-mini' was shut")
    unused = {"analysis": {"model": "gpt-4.1-mini"}, "profiles": {"default": {"analysis": {"model": "gpt-6-luna"}}}}
    assert [w for w in _validate(tmp_path, unused, TODAY).warnings if "analysis.model" in w.path] == []
    default: dict[str, Any] = {"profiles": {"default": {"analysis": {}}}}
    assert [w for w in _validate(tmp_path, default, TODAY).warnings if "analysis.model" in w.path] == []
