"""OpenAI's Responses API (``POST /v1/responses``) for the post-call analysis (#17): a small typed client beside
the calls client (:mod:`.rest`), on the same HTTP client (:func:`~.rest.new_http_client`: the service hands it
the pool OpenAI's REST calls use) and with the same errors (:class:`~.rest.OpenAIError` and its kinds), so the
same retry policy (:func:`~.retries.with_retries`) applies.

What this module knows is the wire: the request (``model``, ``instructions``, ``input``, a strict
``json_schema`` text format, ``store: false``) and the answer (the JSON text of the output message, the
``usage``, a refusal or an incomplete answer as an error). What to ask and what to do with the answer is the
caller's (:mod:`sip_controller.calls.analysis`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from sip_controller.realtime.rest import HTTP_ERRORS, OpenAIError, TransportError, _error_for, _no_answer

OPERATION = "responses"


class UnusableAnswer(OpenAIError):
    """A 2xx answer that holds no usable text: the model refused, the answer was cut (``incomplete``) or failed, or
    the body is not a response object. Not retried by the transport policy (asking again right away seldom
    helps); the analysis's own attempts may."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(OPERATION, 200, message, code=code)


@dataclass(frozen=True)
class TextUsage:
    """A response's ``usage``: input tokens (cached ones included), cached input tokens, output tokens (reasoning
    included)."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
        }


@dataclass(frozen=True)
class TextAnswer:
    """The output text of a completed response, the model that answered, its id and usage."""

    text: str
    model: str
    response_id: str
    usage: TextUsage


def structured_request(
    *, model: str, instructions: str, text: str, name: str, schema: Mapping[str, Any]
) -> dict[str, Any]:
    """The body of a Responses API request whose answer is one JSON object valid against ``schema`` (strict
    structured output), not kept by OpenAI (``store: false``)."""
    return {
        "model": model,
        "instructions": instructions,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}],
        "text": {"format": {"type": "json_schema", "name": name, "schema": dict(schema), "strict": True}},
        "store": False,
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def read_answer(payload: Any) -> TextAnswer:
    """The output text of a Responses API answer; :class:`UnusableAnswer` when there is none to use."""
    if not isinstance(payload, Mapping) or payload.get("object") != "response":
        raise UnusableAnswer("the answer is not a response object", code="not_a_response")
    status = payload.get("status")
    if status != "completed":
        details = payload.get("incomplete_details") or payload.get("error") or {}
        why = details.get("reason") or details.get("message") if isinstance(details, Mapping) else None
        raise UnusableAnswer(f"the response is {status}" + (f" ({why})" if why else ""), code=f"response_{status}")
    texts: list[str] = []
    for item in payload.get("output") or ():
        if not isinstance(item, Mapping) or item.get("type") != "message":
            continue  # reasoning items and the like carry no answer
        for part in item.get("content") or ():
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "refusal":
                raise UnusableAnswer(f"the model refused: {part.get('refusal')}", code="refusal")
            if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
    if not texts:
        raise UnusableAnswer("the response holds no output text", code="no_output_text")
    usage = payload.get("usage") if isinstance(payload.get("usage"), Mapping) else {}
    assert isinstance(usage, Mapping)
    cached = usage.get("input_tokens_details")
    return TextAnswer(
        text="".join(texts),
        model=str(payload.get("model") or ""),
        response_id=str(payload.get("id") or ""),
        usage=TextUsage(
            input_tokens=_int(usage.get("input_tokens")),
            cached_tokens=_int(cached.get("cached_tokens")) if isinstance(cached, Mapping) else 0,
            output_tokens=_int(usage.get("output_tokens")),
        ),
    )


class ResponsesAPI:
    """``POST {base_url}/responses``. The client is owned by whoever made it."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        observer: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self._client = client
        self._url = base_url.rstrip("/") + "/responses"
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._observer = observer

    async def create(self, body: Mapping[str, Any], *, timeout: float) -> TextAnswer:
        """Send ``body``; the answer's text, or the :class:`OpenAIError` that says why there is none."""
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        started = time.monotonic()
        status = 0
        try:
            response = await self._client.post(
                self._url, content=content, headers=self._headers, timeout=httpx.Timeout(timeout, connect=5.0)
            )
            status = response.status_code
        except HTTP_ERRORS as exc:
            raise TransportError(OPERATION, 0, _no_answer(exc)) from exc
        finally:
            if self._observer is not None:
                self._observer(OPERATION, status, time.monotonic() - started)
        if not response.is_success:
            raise _error_for(OPERATION, response)
        try:
            payload = json.loads(response.content)
        except ValueError:
            raise UnusableAnswer("the answer is not JSON", code="not_json") from None
        return read_answer(payload)
