"""OpenAI-shaped API errors: the REST error body and the sideband ``error`` event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ApiError:
    """One error as OpenAI reports it: ``{"error": {"message", "type", "code", "param"}}``."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None

    def body(self) -> dict[str, Any]:
        """The REST response body."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def event_error(self, client_event_id: str | None) -> dict[str, Any]:
        """The ``error`` object of a sideband ``error`` event (``event_id`` echoes the client's event)."""
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": client_event_id,
        }


def describe(value: object) -> str:
    """How OpenAI names a JSON value's type in ``invalid_type`` messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "an unknown value"


def unknown_parameter(param: str) -> ApiError:
    return ApiError(400, f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param)


def missing_parameter(param: str) -> ApiError:
    return ApiError(
        400, f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
    )


def invalid_type(param: str, expected: str, got: object) -> ApiError:
    got_text = describe(got)
    suffix = "null instead" if got is None else f"{got_text} instead"
    message = f"Invalid type for '{param}': expected {expected}, but got {suffix}."
    return ApiError(400, message, code="invalid_type", param=param)


def invalid_value(param: str, value: object, supported: list[str] | None = None) -> ApiError:
    message = f"Invalid value: {value!r}."
    if supported:
        quoted = [f"'{s}'" for s in supported]
        listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f" and {quoted[-1]}"
        message += f" Supported values are: {listed}."
    return ApiError(400, message, code="invalid_value", param=param)


def out_of_range(param: str, value: float, low: float, high: float) -> ApiError:
    kind = "integer" if isinstance(value, int) else "decimal"
    if value < low:
        return ApiError(
            400,
            f"Invalid '{param}': {kind} below minimum value. "
            f"Expected a value >= {low}, but got {value} instead.",
            code=f"{kind}_below_min_value",
            param=param,
        )
    return ApiError(
        400,
        f"Invalid '{param}': {kind} above maximum value. "
        f"Expected a value <= {high}, but got {value} instead.",
        code=f"{kind}_above_max_value",
        param=param,
    )


def pattern_mismatch(param: str, pattern: str) -> ApiError:
    return ApiError(
        400,
        f"Invalid '{param}': string does not match pattern. Expected a string that matches the pattern "
        f"'{pattern}'.",
        code="invalid_value",
        param=param,
    )


def mcp_server_conflict(where: str) -> ApiError:
    return ApiError(
        400,
        f"Invalid '{where}': provide exactly one of 'server_url' or 'connector_id', not both.",
        code="invalid_value",
        param=f"{where}.connector_id",
    )


def stored_prompt_unavailable(prompt_id: object) -> ApiError:
    """The sideband ``error`` after an accept that referenced a stored prompt (shut down 2026-11-30)."""
    return ApiError(
        400,
        f"The stored prompt {prompt_id!r} could not be loaded: stored prompts were shut down on 2026-11-30. "
        "Put the text in 'instructions'.",
        code="invalid_prompt",
        param="prompt",
    )


def call_not_found(call_id: str) -> ApiError:
    return ApiError(404, f"Call '{call_id}' not found.", code="call_id_not_found")


def invalid_json() -> ApiError:
    return ApiError(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
        "HTTP library correctly. The OpenAI API expects a JSON payload.)",
    )


def bad_api_key(provided: str | None) -> ApiError:
    if not provided:
        return ApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    shown = provided[:6] + "*" * 4
    return ApiError(
        401,
        f"Incorrect API key provided: {shown}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


def server_error(message: str = "The server had an error while processing your request.") -> ApiError:
    return ApiError(500, message, type="server_error")
