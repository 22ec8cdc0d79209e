"""What happened to each call on the Twilio stand-in: the API requests about it, the TwiML it ran, the signed
callbacks it sent and how they were answered, the OpenAI calls it bridged to. Times are the simulator's clock
(``Simulator.now()``), so a Twilio call's timeline sorts next to its OpenAI leg's."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

from .twilio_spec import FINAL_STATUSES, TwilioExpectation

#: TwiML kept per document in the record (the rest is cut)
TWIML_KEPT = 4000


@dataclass
class ApiRequest:
    """One Calls API request about this call (create, fetch, update): its form fields and the HTTP answer."""

    t: float
    method: str
    path: str
    params: list[tuple[str, str]]
    status: int
    error_code: int | None = None


@dataclass
class TwimlRun:
    """A TwiML document the call received: where from (``Twiml``, the ``Url`` fetch, an update, a Dial action, a
    redirect), its text (cut at :data:`TWIML_KEPT`), the verbs read, or why it was refused."""

    t: float
    source: str
    text: str
    verbs: list[str]
    error: str | None = None


@dataclass
class Callback:
    """A signed request the stand-in made: ``kind`` is ``status``, ``amd``, ``voice``, ``action``, ``refer``,
    ``redirect``, ``gather`` (a ``<Gather>``'s action) or ``recording``; ``status`` is the HTTP answer (0: none)."""

    t: float
    kind: str
    url: str
    method: str
    params: dict[str, str]
    status: int = 0
    error: str | None = None

    @property
    def call_status(self) -> str | None:
        return self.params.get("CallStatus")


@dataclass
class Bridge:
    """One ``<Dial><Sip>``: the URI, the headers the INVITE carried, the OpenAI call it became (``None`` when the
    URI was not the project's), how it ended (``DialCallStatus``) and the SIP code."""

    t: float
    uri: str
    headers: list[dict[str, str]]
    call_id: str | None
    status: str = "ringing"
    sip_response_code: int | None = None
    answered_at: float | None = None
    ended_at: float | None = None


@dataclass
class GatherRun:
    """One ``<Gather>``: when it began listening (after its prompts), what it listened for, when it ended and how long
    it listened (nominal seconds), what it heard (``heard`` and ``confidence`` for speech, ``digits``; all None:
    nothing), where it went with that (``action``; None: on with the next verb) and what that answered (the HTTP
    status and the verbs of the TwiML)."""

    t: float
    input: str
    timeout: int
    ended_at: float | None = None
    seconds: float | None = None
    heard: str | None = None
    confidence: float | None = None
    digits: str | None = None
    action: str | None = None
    status: int | None = None
    answered: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """``gather: heard '[hold music]' (0.35) → HTTP 200: Gather``, for the timeline."""
        if self.heard is not None:
            what = f"heard '{self.heard}' ({self.confidence})"
        elif self.digits is not None:
            what = f"heard digits {self.digits}"
        else:
            what = f"nothing heard in {self.timeout}s"
        if self.action is None:
            return f"gather: {what}, on with the next verb"
        answer = f"HTTP {self.status}" if self.status else "no answer"
        return f"gather: {what} → {answer}" + (f": {', '.join(self.answered)}" if self.answered else "")


@dataclass
class Spoken:
    """A ``<Say>`` played on the call; ``recorded``: a voicemail was recording it (after the beep)."""

    t: float
    text: str
    recorded: bool = False


@dataclass
class TwilioCall:
    """The stand-in's record of one Twilio call."""

    sid: str
    account_sid: str
    direction: str
    from_: str
    to: str
    name: str
    created_at: float
    status: str = "queued"
    answered_by: str | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    sip_response_code: int | None = None
    error_code: int | None = None
    error_message: str | None = None
    requests: list[ApiRequest] = field(default_factory=list)
    twiml: list[TwimlRun] = field(default_factory=list)
    callbacks: list[Callback] = field(default_factory=list)
    bridges: list[Bridge] = field(default_factory=list)
    said: list[Spoken] = field(default_factory=list)
    #: every ``<Gather>`` the call ran (a parked hold listening for a person, #16)
    gathers: list[GatherRun] = field(default_factory=list)
    #: when the voicemail's beep sounded (``None``: no voicemail, or the call ended before it)
    beep_at: float | None = None
    #: what the voicemail recorded after the beep: ``<Say>`` texts and the OpenAI leg's assistant transcripts
    voicemail_message: list[str] = field(default_factory=list)
    #: ``{"sid", "url", "duration", "channels"}`` when the call was recorded (``Record=true``)
    recording: dict[str, Any] | None = None
    #: TwiML refused or warned about, callbacks not answered 2xx, anything Twilio would log as an error
    problems: list[str] = field(default_factory=list)
    #: who ended it: ``callee``/``caller`` (the person hung up), ``twiml`` (``<Hangup>`` or the end of the TwiML),
    #: ``api`` (an update to completed/canceled), ``carrier`` (busy, no answer, failed)
    ended_by: str | None = None
    #: nominal seconds from the answer to the end (``CallDuration``; 0 when never answered), once ended
    duration: int | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def is_ended(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def statuses(self) -> list[str]:
        """``CallStatus`` of every status callback sent, in order."""
        return [cb.params.get("CallStatus", "") for cb in self.callbacks if cb.kind == "status"]

    @property
    def openai_call_ids(self) -> list[str]:
        """Every OpenAI call the call was bridged to, in order (a parked call has one per return, #16)."""
        return [bridge.call_id for bridge in self.bridges if bridge.call_id is not None]

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def timeline(self) -> list[tuple[float, str]]:
        """``(t, "twilio  …")`` lines: requests, callbacks, TwiML, speech, bridges, gathers; for printing beside the
        OpenAI leg's and the controller's. A ``<Gather>`` is one line with its action's callback and answer, and a
        run of gathers that went alike (a parked hold's music, heard part after part) is one line with its count."""
        lines: list[tuple[float, str]] = [(self.created_at, f"twilio  {self.direction} {self.from_} → {self.to}")]
        lines += [(r.t, f"twilio  API {r.method} {r.path.rsplit('/', 1)[-1]} → {r.status}") for r in self.requests]
        for cb in self.callbacks:
            if cb.kind == "gather" and not cb.error:  # on its gather's line
                continue
            what = cb.params.get("CallStatus") or cb.params.get("AnsweredBy") or cb.params.get("RecordingStatus", "")
            lines.append((cb.t, f"twilio  {cb.kind} callback {what} → HTTP {cb.status or 'no answer'}"))
        lines += [(d.t, f"twilio  TwiML ({d.source}): {', '.join(d.verbs) or d.error}") for d in self.twiml
                  if d.source != "gather" or d.error]  # fmt: skip
        lines += [(s.t, f"twilio  says “{s.text}”" + (" (recorded)" if s.recorded else "")) for s in self.said]
        for bridge in self.bridges:
            lines.append((bridge.t, f"twilio  dials {bridge.uri.split('?')[0]} → {bridge.call_id or 'nobody'}"))
        if self.beep_at is not None:
            lines.append((self.beep_at, "twilio  voicemail beep"))
        if self.ended_at is not None:
            lines.append((self.ended_at, f"twilio  {self.status} (ended by {self.ended_by})"))
        lines = sorted(lines, key=lambda line: line[0])
        return _merged(lines, sorted((g.t, f"twilio  {g.describe()}") for g in self.gathers))

    def summary(self) -> dict[str, Any]:
        """Everything above as JSON-serialisable data."""
        data: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key == "ended":
                continue
            if isinstance(value, list) and value and hasattr(value[0], "__dataclass_fields__"):
                data[key] = [asdict(item) for item in value]
            else:
                data[key] = value
        data["statuses"] = self.statuses
        return data


def _merged(lines: list[tuple[float, str]], gathers: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """``lines`` with the gathers' lines in time order, a run of alike gathers with nothing between them as one
    line (``x N over S s``)."""
    merged = sorted([*lines, *((t, text) for t, text in gathers)], key=lambda line: line[0])
    gather_texts = {text for _, text in gathers}
    out: list[tuple[float, str]] = []
    run: list[tuple[float, str]] = []

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            first, last = run[0][0], run[-1][0]
            out.append((first, f"{run[0][1]}  (x{len(run)} over {last - first:.2f}s)"))
        run.clear()

    for t, text in merged:
        if text in gather_texts and run and run[-1][1] == text:
            run.append((t, text))
            continue
        flush()
        if text in gather_texts:
            run.append((t, text))
        else:
            out.append((t, text))
    flush()
    return out


def check_twilio_call(call: TwilioCall, expect: TwilioExpectation | None) -> list[str]:
    """Mismatches between a :class:`~.twilio_spec.TwilioExpectation` and the record; empty when all hold."""
    if expect is None:
        return []
    problems: list[str] = []

    def compare(name: str, wanted: object, got: object) -> None:
        if wanted is not None and wanted != got:
            problems.append(f"{call.name}: twilio {name}: expected {wanted!r}, got {got!r}")

    compare("statuses", expect.statuses, call.statuses)
    compare("final_status", expect.final_status, call.status)
    compare("answered_by", expect.answered_by, call.answered_by)
    compare("bridged", expect.bridged, bool(call.openai_call_ids))
    compare("error_code", expect.error_code, call.error_code)
    compare("openai_legs", expect.openai_legs, len(call.openai_call_ids))
    if expect.min_gathers is not None and len(call.gathers) < expect.min_gathers:
        problems.append(f"{call.name}: twilio min_gathers: expected at least {expect.min_gathers}, "
                        f"got {len(call.gathers)}")  # fmt: skip
    if expect.no_problems and call.problems:
        problems.append(f"{call.name}: twilio problems: {call.problems}")
    for name in expect.sip_headers or ():
        sent = {h["name"].lower() for bridge in call.bridges for h in bridge.headers}
        if name.lower() not in sent:
            problems.append(f"{call.name}: twilio sip_headers: {name} was not sent to OpenAI")
    message = " ".join(call.voicemail_message).casefold()
    for text in expect.voicemail_contains or ():
        if text.casefold() not in message:
            problems.append(f"{call.name}: twilio voicemail_contains: {text!r} not in {call.voicemail_message!r}")
    return problems
