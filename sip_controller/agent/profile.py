"""Agent profiles: what one phone agent is told, how it sounds, what it may do, and its limits."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from sip_controller.agent import tools
from sip_controller.agent.analysis import CallAnalysis


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TurnDetection(Strict):
    """``audio.input.turn_detection``. Ranges are checked by ``validation`` on the built session.

    threshold / prefix_padding_ms / silence_duration_ms are sent by session.update after attach (OpenAI is
    reported to refuse them on /accept for SIP) unless the profile sets ``vad_on_accept``.
    """

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    idle_timeout_ms: int | None = None
    eagerness: str | None = None
    create_response: bool = True
    interrupt_response: bool = True


class Transcription(Strict):
    """``audio.input.transcription``: transcribe the caller's side."""

    model: str = "gpt-4o-mini-transcribe"
    language: str | None = None
    prompt: str | None = None


_TARGET_URI = re.compile(r"^(tel:\+[1-9][0-9]{1,14}|sips?:[^\s@]+@[^\s]+)$")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class HandlerTool(Strict):
    """A function tool the controller runs: its JSON Schema goes into the session, the model's arguments are
    checked against it, and the handler's answer becomes the function output."""

    name: str
    description: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: if the answer takes longer than this, the model says a short filler line instead of dead air
    filler_after_s: float | None = Field(default=1.5, gt=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TOOL_NAME.fullmatch(value):
            raise ValueError("tool names must match ^[a-zA-Z0-9_-]{1,64}$")
        return value

    def session_tool(self) -> dict[str, Any]:
        return {"type": "function", "name": self.name, "description": self.description, "parameters": self.parameters}


class HttpTool(HandlerTool):
    """POSTs ``{"tool", "arguments", "call"}`` to ``url``, signed with Standard Webhooks when ``secret_env`` names
    an environment variable holding a ``whsec_`` secret; the response body (text or JSON) is the output."""

    type: Literal["http"]
    url: str
    secret_env: str | None = None
    #: the answer is read as it streams and cut here: an endpoint that answers too much can't fill memory
    max_response_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value


class PythonTool(HandlerTool):
    """Calls ``handler`` (``package.module:function``, an async function taking ``(arguments: dict, call:
    ToolCall)`` and returning text or a JSON-able value)."""

    type: Literal["python"]
    handler: str

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError("must look like package.module:function")
        return value


ToolEntry = str | HttpTool | PythonTool | dict[str, Any]


def _typed_tool(entry: Any) -> Any:
    """An object with type http/python becomes an HttpTool/PythonTool, so its errors are that model's (not one
    per member of the union). Run on each entry of ``tools``: every bad tool is reported, at ``tools[i]``."""
    if isinstance(entry, dict) and entry.get("type") == "http":
        return HttpTool.model_validate(entry)
    if isinstance(entry, dict) and entry.get("type") == "python":
        return PythonTool.model_validate(entry)
    return entry


_TypedToolEntry = Annotated[ToolEntry, BeforeValidator(_typed_tool)]


class Transfer(Strict):
    """Where ``transfer_call`` may send a caller: the model only ever names a target, never a number."""

    targets: dict[str, str] = Field(default_factory=dict)
    #: a transfer counts only if OpenAI drops the call (the sideband closes) this soon after /refer
    verify_window_s: float = Field(default=8.0, gt=0, le=60)
    #: when a transfer fails: try the next target in `targets` order, or end the call politely
    on_failure: Literal["next_target", "end_call"] = "end_call"

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [f"{k}: {v!r}" for k, v in value.items() if not _TARGET_URI.match(v)]
        if bad:
            raise ValueError(f"targets must be tel:+E164 or sip:user@host URIs ({', '.join(bad)})")
        return value


_VARIABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


#: the longest voicemail message: Twilio's answering machines usually record one to three minutes
MAX_VOICEMAIL_MESSAGE_S = 120.0


class Voicemail(Strict):
    """What a call this profile places does when an answering machine picks up (Twilio's answering-machine
    detection, reported asynchronously). ``hangup``: hang up at once; ``leave_message``: wait for the beep
    (``machine_detection: DetectMessageEnd``), say ``message`` (fixed text, ``{{ var:name }}`` allowed) or a message
    the model makes up from the conversation's instructions (``message_from_model``), then hang up. Either way the
    call ends as ``voicemail``."""

    action: Literal["hangup", "leave_message"] = "hangup"
    message: str | None = Field(default=None, min_length=1, max_length=1000)
    message_from_model: bool = False
    #: the message's audio is cut off (and the call hung up) this long after it started at the latest
    max_message_s: float = Field(default=60.0, gt=0, le=MAX_VOICEMAIL_MESSAGE_S)

    @model_validator(mode="after")
    def _message(self) -> Voicemail:
        if self.action == "hangup" and (self.message is not None or self.message_from_model):
            raise ValueError("message and message_from_model are for action: leave_message")
        if self.action == "leave_message" and (self.message is None) == (not self.message_from_model):
            raise ValueError("leave_message needs exactly one of message (the text to say) and "
                             "message_from_model: true")  # fmt: skip
        return self


class Outbound(Strict):
    """Calls this profile places through Twilio (``POST /v1/outbound``, ``sipctl call``)."""

    #: Twilio's answering machine detection: off, ``Enable`` (human or machine as soon as known) or
    #: ``DetectMessageEnd`` (waits for the greeting's end: the moment to leave a message)
    machine_detection: Literal["off", "Enable", "DetectMessageEnd"] = "off"
    #: the caller ID for this profile's calls (E.164, a number of the Twilio account); default twilio.from_number
    from_number: str | None = None

    #: what to do when an answering machine picks up (None: nothing; the call goes on as if a person answered)
    voicemail: Voicemail | None = None

    @field_validator("from_number")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\+[1-9][0-9]{1,14}", value):
            raise ValueError("must be an E.164 number of your Twilio account, e.g. +14155550100")
        return value

    @model_validator(mode="after")
    def _detection_for_voicemail(self) -> Outbound:
        voicemail = self.voicemail
        if voicemail is None:
            return self
        if self.machine_detection == "off":
            raise ValueError("voicemail needs answering-machine detection: set machine_detection to "
                             "DetectMessageEnd (or Enable, to hang up on machines)")  # fmt: skip
        if voicemail.action == "leave_message" and self.machine_detection != "DetectMessageEnd":
            raise ValueError("voicemail.action leave_message needs machine_detection: DetectMessageEnd (the message "
                             "starts after the beep, which only DetectMessageEnd waits for)")  # fmt: skip
        return self


class Recording(Strict):
    """Twilio records this profile's calls (#16): both sides, each on its own channel, from the answer; the
    recording's SID, URL, duration and channels arrive by Twilio's signed callback and go on the call's report (a
    late ``call.recording`` event when the report already went out). Only calls through Twilio (a number's voice
    webhook, calls we place) can be recorded. Recording a call is regulated: see the README on consent."""

    enabled: bool = False


#: OpenAI ends every Realtime session this long after it began (the call with it)
OPENAI_SESSION_LIMIT_S = 3600.0
#: the longest ``watchdogs.max_duration_s``: the wrap-up, the goodbye (even talked over) and the hangup must all
#: land before OpenAI's limit
MAX_CALL_DURATION_S = 3480.0


class Watchdogs(Strict):
    #: the call ends by itself after this long (a spoken wrap-up first); OpenAI's own cap is 60 minutes
    max_duration_s: float = Field(default=600.0, ge=60)
    #: how long before max_duration_s the wrap-up is said
    wrap_up_before_s: float = Field(default=30.0, ge=0, le=300)
    #: no caller speech for this long: one nudge, then goodbye; null turns it off
    silence_timeout_s: float | None = Field(default=30.0, ge=5)
    #: cost of the call (USD) past which it is wrapped up; null: no budget
    budget_usd: float | None = Field(default=None, gt=0)

    @field_validator("max_duration_s")
    @classmethod
    def _within_openais_session_limit(cls, value: float) -> float:
        if value > MAX_CALL_DURATION_S:
            raise ValueError(
                "too long: OpenAI ends every Realtime session after 60 minutes, and the wrap-up and goodbye must land "
                f"before that; set at most {MAX_CALL_DURATION_S:g} (58 minutes) (got {value!r})"
            )
        return value


class Park(Strict):
    """Parking a long hold on Twilio (#16): when the model's ``wait_on_hold`` says the wait may be at least
    ``after_min`` minutes, on a call Twilio bridged into OpenAI, the OpenAI leg ends and Twilio keeps the line,
    listening for speech (``<Gather input="speech">`` rounds of ``listen_timeout_s``); what it hears is checked as
    the hold's ``detect`` says (its phrases, or a text check by ``check_model`` through the Responses API), and when
    a person is back a fresh OpenAI session is bridged, primed with the conversation so far. No Realtime session
    then runs into OpenAI's 60-minute limit while on hold. A line parked longer than ``max_parked_s`` is hung up."""

    after_min: float = Field(default=10.0, gt=0, le=600)
    max_parked_s: float = Field(default=7200.0, gt=0, le=86_400)
    listen_timeout_s: int = Field(default=15, ge=1, le=60)
    check_model: str = Field(default="gpt-6-luna", min_length=1)


class Hold(Strict):
    """``wait_on_hold``: the model stops answering (music, recordings) until a person is back."""

    #: how a person is recognised: a cheap out-of-band yes/no classification, or a phrase list
    detect: Literal["classifier", "phrases"] = "classifier"
    resume_phrases: tuple[str, ...] = (
        "thank you for holding",
        "thanks for holding",
        "thank you for waiting",
        "sorry for the wait",
        "how can i help",
        "are you there",
    )
    max_hold_s: float = Field(default=2400.0, gt=0, le=3500)
    #: on a call Twilio bridged into OpenAI (#16): park a long hold on Twilio instead (None: never park)
    park: Park | None = None


class DtmfAction(Strict):
    action: Literal["transfer", "end_call"]
    target: str | None = None


class Dtmf(Strict):
    #: keypad digits (not mapped below) are passed to the model as a user message
    forward: bool = True
    #: digits are gathered until `#` or this long without a new one
    flush_after_s: float = Field(default=1.5, gt=0, le=10)
    #: digit -> action, e.g. {"0": {action: transfer, target: operator}}
    actions: dict[str, DtmfAction] = Field(default_factory=dict)

    @field_validator("actions")
    @classmethod
    def _digits(cls, value: dict[str, DtmfAction]) -> dict[str, DtmfAction]:
        bad = [k for k in value if k not in "0123456789*#ABCD" or len(k) != 1]
        if bad:
            raise ValueError(f"keys must be single keypad digits 0-9 * # A-D (got {bad})")
        return value


class AgentProfile(Strict):
    """One phone agent: what the model is told, how it sounds, and what it may do.

    Session rules (voices, ranges, codecs, tools, models) are checked by ``preflight`` on the exact body
    that will be sent, so one set of rules covers typed fields, the raw ``session`` block and in-call updates.
    """

    model: str = "gpt-realtime-2.1"
    instructions: str = (
        "You are a friendly phone assistant. Keep answers short: this is a phone call. "
        "When the caller says goodbye or has nothing else, say a short goodbye and call end_call."
    )
    voice: str = "marin"
    speed: float | None = None
    greeting: str | None = "Hello! Thanks for calling. How can I help you today?"
    turn_detection: TurnDetection | None = TurnDetection()
    transcription: Transcription | None = Transcription()
    noise_reduction: Literal["near_field", "far_field"] | None = None
    codec: Literal["pcmu", "pcma", "pcm", "negotiated"] = "pcmu"
    allow_pcm: bool = False
    vad_on_accept: bool = False
    tools: tuple[_TypedToolEntry, ...] = ("end_call",)
    tool_choice: str | dict[str, Any] = "auto"
    max_output_tokens: int | str | None = None
    reasoning_effort: str | None = None
    parallel_tool_calls: bool | None = None
    prompt: dict[str, Any] | None = None
    #: extra GA session fields merged last into the accept body (advanced; checked like everything else)
    session: dict[str, Any] = Field(default_factory=dict)
    #: SIP headers whose (untrusted) values instruction templates may use, e.g. X-Customer-Id
    template_headers: tuple[str, ...] = ()
    template_value_max_chars: int = Field(default=64, ge=1, le=1024)
    timezone: str = "UTC"
    goodbye_timeout_s: float = Field(default=5.0, gt=0, le=60)
    session_ack_timeout_s: float = Field(default=5.0, gt=0, le=60)
    early_error_window_s: float = Field(default=5.0, ge=0, le=60)
    transfer: Transfer = Transfer()
    watchdogs: Watchdogs = Watchdogs()
    hold: Hold = Hold()
    dtmf: Dtmf = Dtmf()
    #: the variables a call placed with this profile must be given (``{{ var:first_name }}`` in instructions)
    variables: tuple[str, ...] = ()
    outbound: Outbound = Outbound()
    #: Twilio records the call (#16): off by default
    recording: Recording = Recording()
    #: post-call analysis (#17): a summary, the fields of ``schema`` and the success verdict of each finished call
    analysis: CallAnalysis | None = None

    @field_validator("variables")
    @classmethod
    def _variable_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [name for name in value if not _VARIABLE_NAME.match(name)]
        if bad:
            raise ValueError(
                f"variable names are lower case letters, digits and _ (starting with a letter, at most 40): {bad}"
            )
        if len(set(value)) != len(value):
            raise ValueError("each variable may be declared once")
        return value

    @model_validator(mode="after")
    def _park_needs_the_tool(self) -> AgentProfile:
        if self.hold.park is not None and "wait_on_hold" not in self.tool_names():
            raise ValueError("hold.park parks the holds the model announces with wait_on_hold, which is not in this "
                             "profile's tools; add wait_on_hold to tools, or remove hold.park")  # fmt: skip
        return self

    def handler_tools(self) -> dict[str, HttpTool | PythonTool]:
        return {t.name: t for t in self.tools if isinstance(t, HttpTool | PythonTool)}

    def tool_names(self) -> list[str]:
        names = []
        for entry in self.tools:
            if isinstance(entry, str):
                names.append(entry)
            elif isinstance(entry, HttpTool | PythonTool):
                names.append(entry.name)
            elif entry.get("type") == "function":
                names.append(str(entry.get("name", "")))
        return names

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, value: tuple[ToolEntry, ...]) -> tuple[ToolEntry, ...]:
        names = [entry for entry in value if isinstance(entry, str)]
        unknown = [name for name in names if name not in tools.BUILTIN_TOOLS]
        if unknown:
            raise ValueError(
                f"unknown built-in tool(s) {unknown}; available: {', '.join(sorted(tools.BUILTIN_TOOLS))} "
                "(other tools are objects with type: function or mcp)"
            )
        if len(set(names)) != len(names):
            raise ValueError("each built-in tool may be listed once")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone; use an IANA name such as Europe/Paris or America/New_York") from None
        return value


