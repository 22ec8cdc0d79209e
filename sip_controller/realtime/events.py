"""Typed sideband server events, parsed once at the edge. Unknown types are kept as UnknownEvent."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str | None = None


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str | None = None
    code: str | None = None
    message: str = ""
    param: str | None = None
    event_id: str | None = None


class ErrorEvent(_Event):
    type: Literal["error"]
    error: ErrorDetail


class SessionEvent(_Event):
    type: Literal["session.created", "session.updated"]
    session: dict[str, Any] = Field(default_factory=dict)


class TokenDetails(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    text_tokens: int = 0
    audio_tokens: int = 0


class InputTokenDetails(TokenDetails):
    cached_tokens: int = 0
    cached_tokens_details: TokenDetails = TokenDetails()


class Usage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_token_details: InputTokenDetails = InputTokenDetails()
    output_token_details: TokenDetails = TokenDetails()


class OutputItem(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str = ""
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    content: list[dict[str, Any]] = Field(default_factory=list)

    def text(self) -> str:
        """The text of a message item (``output_text`` / ``text`` / audio ``transcript`` parts)."""
        parts = [c.get("text") or c.get("transcript") or "" for c in self.content if isinstance(c, dict)]
        return " ".join(str(p) for p in parts if p).strip()


class StatusError(BaseModel):
    """Why a response failed (``status_details.error``): e.g. ``{type: server_error}`` or
    ``{type: invalid_request_error, code: insufficient_quota}``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str | None = None
    code: str | None = None
    message: str | None = None


class StatusDetails(BaseModel):
    """``response.status_details``: ``type`` mirrors the status; ``reason`` says why a response did not complete
    (``turn_detected`` or ``client_cancelled`` for a cancelled one, ``max_output_tokens`` or ``content_filter``
    for an incomplete one); ``error`` is set on a failed one."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str | None = None
    reason: str | None = None
    error: StatusError | None = None


class Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = ""
    #: ``in_progress`` (created), then ``completed``, ``cancelled``, ``failed`` or ``incomplete``
    status: str | None = None
    status_details: StatusDetails | None = None
    output: list[OutputItem] = Field(default_factory=list)
    usage: Usage | None = None
    metadata: dict[str, Any] | None = None

    def has_audio(self) -> bool:
        """Whether the response made audio (its playback may start later, after audio still queued)."""
        return any(
            isinstance(part, dict) and part.get("type") in ("output_audio", "audio")
            for item in self.output
            for part in item.content
        )


class ResponseEvent(_Event):
    type: Literal["response.created", "response.done"]
    response: Response


class FunctionCallArgumentsDone(_Event):
    type: Literal["response.function_call_arguments.done"]
    call_id: str
    name: str = ""
    arguments: str = ""
    response_id: str | None = None
    item_id: str | None = None


class OutputTranscriptDone(_Event):
    type: Literal["response.output_audio_transcript.done"]
    response_id: str | None = None
    item_id: str | None = None
    transcript: str = ""


class TranscriptionUsage(BaseModel):
    """Either ``{type: tokens, input_tokens, output_tokens, input_token_details}`` or ``{type: duration, seconds}``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str = "tokens"
    input_tokens: int = 0
    output_tokens: int = 0
    input_token_details: TokenDetails = TokenDetails()
    seconds: float = 0.0


class InputTranscriptionCompleted(_Event):
    type: Literal["conversation.item.input_audio_transcription.completed"]
    item_id: str | None = None
    transcript: str = ""
    usage: TranscriptionUsage | None = None


class InputTranscriptionFailed(_Event):
    type: Literal["conversation.item.input_audio_transcription.failed"]
    item_id: str | None = None


class SpeechEdge(_Event):
    type: Literal["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"]


class OutputAudioBuffer(_Event):
    type: Literal["output_audio_buffer.started", "output_audio_buffer.stopped", "output_audio_buffer.cleared"]
    response_id: str | None = None


class DtmfReceived(_Event):
    type: Literal["input_audio_buffer.dtmf_event_received"]
    event: str = ""


class InputAudioTimeout(_Event):
    """Server VAD's ``idle_timeout_ms`` fired: no caller speech that long after the last response's audio.
    OpenAI commits the silence and makes a response (a re-prompt) by itself; it never hangs up."""

    type: Literal["input_audio_buffer.timeout_triggered"]
    audio_start_ms: int = 0
    audio_end_ms: int = 0
    item_id: str | None = None


class RateLimit(BaseModel):
    """One rate limit as OpenAI reports it (``requests`` or ``tokens``); every field may be missing."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str | None = None
    limit: int | None = None
    remaining: int | None = None
    reset_seconds: float | None = None


class RateLimitsUpdated(_Event):
    """Sent as a response starts (its output tokens reserved): the project's limits as they stand."""

    type: Literal["rate_limits.updated"]
    rate_limits: list[RateLimit] = Field(default_factory=list)


#: GA events the controller knows and has no use for: the item, content-part and delta events that stream an
#: answer (it acts on response.done and the transcript's .done), and the acknowledgements of client events. They
#: are not "unknown": they are not counted in ``ignored_events``, and nothing past their type is parsed.
PASSIVE_TYPES = frozenset(
    {
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.deleted",
        "conversation.item.retrieved",
        "conversation.item.truncated",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.segment",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.function_call_arguments.delta",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
    }
)


class PassiveEvent(_Event):
    """A known event the controller does not act on (see ``PASSIVE_TYPES``)."""

    type: str


class UnknownEvent(_Event):
    """A well-formed event of a type we do not handle (counted and ignored)."""

    type: str


class MalformedEvent(BaseModel):
    """A frame that is not a JSON object with a string ``type``, or a known type with bad fields."""

    model_config = ConfigDict(frozen=True)

    type: Literal["malformed"] = "malformed"
    reason: str


ServerEvent = (
    ErrorEvent
    | SessionEvent
    | ResponseEvent
    | FunctionCallArgumentsDone
    | OutputTranscriptDone
    | InputTranscriptionCompleted
    | InputTranscriptionFailed
    | SpeechEdge
    | OutputAudioBuffer
    | DtmfReceived
    | InputAudioTimeout
    | RateLimitsUpdated
    | PassiveEvent
    | UnknownEvent
    | MalformedEvent
)

_MODELS: dict[str, type[_Event]] = {}
for _model in (
    ErrorEvent,
    SessionEvent,
    ResponseEvent,
    FunctionCallArgumentsDone,
    OutputTranscriptDone,
    InputTranscriptionCompleted,
    InputTranscriptionFailed,
    SpeechEdge,
    OutputAudioBuffer,
    DtmfReceived,
    InputAudioTimeout,
    RateLimitsUpdated,
):
    for _name in _model.model_fields["type"].annotation.__args__:  # type: ignore[union-attr]
        _MODELS[_name] = _model


_TYPE_PREFIX = '{"type":"'


def parse_server_event(raw: str | bytes) -> ServerEvent:
    """One frame as a typed event; never raises (a bad frame is a MalformedEvent)."""
    # Fast path: OpenAI writes ``type`` first. Then one pass of pydantic-core's JSON validator does what
    # json.loads plus model_validate did (a third of the controller's CPU at 2,000 live calls). Anything
    # unusual (another key order, escapes, a body the model refuses) takes the general path below.
    text = raw if isinstance(raw, str) else None
    if text is not None and text.startswith(_TYPE_PREFIX):
        end = text.find('"', len(_TYPE_PREFIX))
        name = text[len(_TYPE_PREFIX) : end]
        if end > 0 and "\\" not in name:
            if name in PASSIVE_TYPES:
                return PassiveEvent.model_construct(type=name)
            try:
                event = (_MODELS.get(name) or UnknownEvent).model_validate_json(text)
            except ValueError:  # ValidationError included: the general path says why
                pass
            else:
                if getattr(event, "type", None) == name:
                    return event  # type: ignore[return-value]
    return _parse_general(raw)


def _parse_general(raw: str | bytes) -> ServerEvent:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, huge integers, absurd nesting
        return MalformedEvent(reason="not JSON")
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return MalformedEvent(reason="not an object with a string type")
    if data["type"] in PASSIVE_TYPES:
        return PassiveEvent.model_construct(type=data["type"])
    model = _MODELS.get(data["type"])
    try:
        if model is None:
            return UnknownEvent.model_validate(data)
        return model.model_validate(data)  # type: ignore[return-value]
    except (ValidationError, RecursionError) as exc:
        if isinstance(exc, RecursionError):
            return MalformedEvent(reason=f"{data['type']}: nested too deeply")
        return MalformedEvent(reason=f"{data['type']}: {exc.error_count()} invalid field(s)")
