"""Fault injection: what the simulated OpenAI side gets wrong on purpose, seeded and bounded.

A :class:`Faults` block (all off by default) is set on the :class:`~sip_controller.simulator.Simulator`
(``faults=``, every call) and per call on ``CallSpec.faults`` (``faults:`` in a scenario; the fields a call
states override the simulator's). Each call draws its decisions from its own ``random.Random`` seeded with
``(seed, call name)``, so the same seed and the same call names repeat the same faults. What was injected is
recorded on the call (``SimCall.faults_injected`` / ``SimCall.fault_kinds``).
"""

from __future__ import annotations

import json
import random
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import ApiError, call_not_found, server_error

Endpoint = Literal["accept", "reject", "refer", "hangup", "sideband"]
ENDPOINTS: tuple[Endpoint, ...] = ("accept", "reject", "refer", "hangup", "sideband")
ErrorStatus = Literal[429, 500, 503]
MalformedKind = Literal["invalid_json", "unknown_type", "missing_fields", "duplicate", "out_of_order"]
MALFORMED_KINDS: tuple[MalformedKind, ...] = (
    "invalid_json",
    "unknown_type",
    "missing_fields",
    "duplicate",
    "out_of_order",
)
DropMode = Literal["abrupt", "1011"]

#: at most this many injected-fault entries are kept per call (``fault_counts`` keeps counting)
MAX_RECORDED = 200
#: ``drop_sideband_at: random`` drops within this many nominal seconds after the (re)attach
RANDOM_DROP_WINDOW = 3.0
#: a held (out-of-order) server event is sent at the latest this many real seconds later
OUT_OF_ORDER_FLUSH_S = 0.05
#: server event types whose required fields the controller checks (a stripped copy is malformed for it)
_STRIPPABLE = {
    "response.created": "response",
    "response.done": "response",
    "error": "error",
    "response.function_call_arguments.done": "call_id",
    "session.created": "session",
    "session.updated": "session",
}


_INVALID_JSON = ('{"type": "response.done", "response": {', "not json at all", "\x00\x01", "[1, 2")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Latency(_Strict):
    """Added delay in nominal seconds (times ``time_scale``): ``fixed``, or uniform in ``[min, max]``."""

    fixed: float | None = Field(default=None, ge=0, le=60)
    min: float = Field(default=0.0, ge=0, le=60)
    max: float = Field(default=0.0, ge=0, le=60)

    @model_validator(mode="after")
    def _ordered(self) -> Latency:
        if self.max < self.min:
            raise ValueError("latency max must be >= min")
        return self

    def sample(self, rng: random.Random) -> float:
        if self.fixed is not None:
            return self.fixed
        if self.max <= 0:
            return 0.0
        return rng.uniform(self.min, self.max)


class EndpointFaults(_Strict):
    """Faults of one endpoint (``sideband``: the WebSocket handshake).

    ``error_rate``: chance that a request is answered ``status`` instead (``429`` carries ``Retry-After:
    retry_after``); ``max_errors`` bounds how many a call gets (then the endpoint behaves).
    ``latency``: added before the request is handled.
    """

    error_rate: float = Field(default=0.0, ge=0, le=1)
    status: ErrorStatus = 500
    retry_after: float = Field(default=0.0, ge=0, le=30)
    max_errors: int = Field(default=3, ge=0, le=100)
    latency: Latency | None = None


ResponseSource = Literal["any", "client", "auto"]
FailedCode = Literal["server_error", "insufficient_quota", "rate_limit_exceeded"]
IncompleteReason = Literal["max_output_tokens", "content_filter"]


class ResponseFailure(_Strict):
    """One way the model's responses go wrong: ``response.done`` ends ``failed`` (``status_details.error``
    says why: ``server_error``, ``insufficient_quota``, ``rate_limit_exceeded``) or ``incomplete`` (the line is
    cut about half-way: ``max_output_tokens`` or ``content_filter``).

    Which responses: the ``nth`` (1-based) of ``source`` (``client``: made by ``response.create``; ``auto``: made
    by the session itself; ``any``), or every one whose line contains ``says`` (case-insensitive; for a tool
    call, its name), or, with neither, every response; at most ``times`` of them. Out-of-band responses
    (``conversation: "none"``) are never hit.
    """

    status: Literal["failed", "incomplete"] = "failed"
    code: FailedCode | None = None
    reason: IncompleteReason | None = None
    nth: int | None = Field(default=None, ge=1)
    source: ResponseSource = "any"
    says: str | None = Field(default=None, min_length=1)
    times: int = Field(default=1, ge=1, le=100)

    @model_validator(mode="after")
    def _consistent(self) -> ResponseFailure:
        if self.status == "failed" and self.reason is not None:
            raise ValueError("reason goes with status: incomplete (a failed response has a code)")
        if self.status == "incomplete" and self.code is not None:
            raise ValueError("code goes with status: failed (an incomplete response has a reason)")
        if self.nth is not None and self.says is not None:
            raise ValueError("a failure picks its responses by nth or by says, not both")
        return self

    @property
    def detail(self) -> str:
        """The failure's code or reason, defaults applied."""
        if self.status == "failed":
            return self.code or "server_error"
        return self.reason or "max_output_tokens"


class ResponsesFaults(_Strict):
    """``POST /v1/responses`` (the post-call analysis, #17), counted across the simulator: the first ``fail_first``
    requests are answered ``status`` (429 with ``Retry-After: 0``; 400 is OpenAI refusing the request's schema, which
    asking again cannot change), then the next ``invalid_first`` answers carry text that is not valid against the
    request's schema. Every answer comes ``delay_s`` wall-clock seconds late (not scaled: a slow model)."""

    fail_first: int = Field(default=0, ge=0, le=1000)
    status: Literal[400, 429, 500, 503] = 500
    invalid_first: int = Field(default=0, ge=0, le=1000)
    delay_s: float = Field(default=0.0, ge=0, le=120)


class Faults(_Strict):
    """Everything the simulated OpenAI side may get wrong. All off by default."""

    seed: int | None = None
    accept: EndpointFaults = EndpointFaults()
    reject: EndpointFaults = EndpointFaults()
    refer: EndpointFaults = EndpointFaults()
    hangup: EndpointFaults = EndpointFaults()
    sideband: EndpointFaults = EndpointFaults()
    #: the first N accepts answer 404 ``call_id_not_found`` (the race right after the webhook), then succeed
    accept_404_race: int = Field(default=0, ge=0, le=10)
    #: the first N accepts take effect but their answer is lost: the 200 is held until the client gives up (at
    #: most ``accept_answer_hold`` nominal seconds), so the client sees a timeout; its retry is answered 400
    #: ``call_already_accepted``, as a second accept of an accepted call is
    accept_answer_lost: int = Field(default=0, ge=0, le=10)
    accept_answer_hold: float = Field(default=30.0, ge=0, le=120)
    #: nominal seconds after each (re)attach at which the sideband is dropped; ``random``: within 3 s
    drop_sideband_at: float | Literal["random"] | None = None
    #: ``abrupt``: the TCP connection is cut without a close frame (the client sees 1006); ``1011``
    drop_sideband_mode: DropMode = "abrupt"
    #: how many times the sideband is dropped (each after a reattach)
    drop_sideband_count: int = Field(default=1, ge=1, le=10)
    #: chance per server event of a bad frame: invalid JSON, unknown type, missing fields (sent before the
    #: real event), the event duplicated, or held back and sent after the next one (out of order)
    malformed_events: float = Field(default=0.0, ge=0, le=1)
    malformed_kinds: list[MalformedKind] = Field(default_factory=lambda: list(MALFORMED_KINDS), min_length=1)
    #: bound on bad frames per call
    malformed_max: int = Field(default=20, ge=0, le=1000)
    #: extra deliveries of the webhook, each after ``webhook_delay`` (so they arrive late and out of order)
    duplicate_webhooks: int = Field(default=0, ge=0, le=10)
    #: the extra deliveries carry a fresh ``webhook-id`` (as if OpenAI sent the event anew): only a
    #: ``call_id`` dedupe catches them
    duplicate_webhook_new_id: bool = False
    #: delay of each extra delivery (nominal seconds); default uniform 0 to 0.5 s
    webhook_delay: Latency = Latency(min=0.0, max=0.5)
    #: once the call has ended, the same webhook (same ``webhook-id`` and body) is delivered again
    redeliver_after_hangup: bool = False
    #: the caller gives up this many nominal seconds after ringing starts, before any accept: an accept
    #: that arrives earlier is held until then and answered 404, as is every later one
    hangup_while_ringing: float | None = Field(default=None, ge=0, le=60)
    #: responses that end ``failed`` or ``incomplete`` instead of ``completed``
    response_failures: list[ResponseFailure] = Field(default_factory=list, max_length=20)
    #: the Responses API's answers (simulator-wide: set on the Simulator, not per call)
    responses: ResponsesFaults = ResponsesFaults()

    def merged(self, override: Faults | None) -> Faults:
        """These faults with the fields ``override`` states replacing them."""
        if override is None:
            return self
        return self.model_copy(update={name: getattr(override, name) for name in override.model_fields_set})


class FaultInjector:
    """One call's fault decisions. Every draw comes from the call's own seeded generator."""

    def __init__(self, faults: Faults, name: str, record: Any) -> None:
        self.faults = faults
        self.name = name
        self.seed = faults.seed if faults.seed is not None else secrets.randbits(48)
        self._rngs: dict[str, random.Random] = {}
        self._rec = record
        self._errors: dict[str, int] = {}
        self._races_left = faults.accept_404_race
        self._answers_lost = 0
        self._malformed = 0
        self.drops_left = faults.drop_sideband_count if faults.drop_sideband_at is not None else 0
        self._failures_left = [rule.times for rule in faults.response_failures]
        self._responses: dict[str, int] = {}
        #: endpoints OpenAI has "recovered" on (:meth:`heal`): no more injected errors there
        self._healed: set[str] = set()

    def rng(self, stream: str) -> random.Random:
        """The generator of one kind of decision, seeded with ``(seed, call name, stream)``: each stream
        repeats for the same seed whatever order the call's events interleave in."""
        rng = self._rngs.get(stream)
        if rng is None:
            rng = self._rngs[stream] = random.Random(f"{self.seed}:{self.name}:{stream}")
        return rng

    def note(self, t: float, kind: str, **detail: Any) -> None:
        """Record one injected fault on the call (bounded)."""
        counts: dict[str, int] = self._rec.fault_counts
        counts[kind] = counts.get(kind, 0) + 1
        injected: list[dict[str, Any]] = self._rec.faults_injected
        if len(injected) < MAX_RECORDED:
            injected.append({"t": t, "kind": kind, **detail})

    # ---- REST and handshake ------------------------------------------------------------------

    def latency(self, endpoint: Endpoint) -> float:
        """Nominal seconds to add before handling a request to ``endpoint``."""
        spec = getattr(self.faults, endpoint)
        assert isinstance(spec, EndpointFaults)
        return spec.latency.sample(self.rng(f"{endpoint}_latency")) if spec.latency is not None else 0.0

    def heal(self, endpoint: Endpoint, t: float) -> None:
        """From now on ``endpoint`` behaves for this call (an outage that ends while the call is up)."""
        self._healed.add(endpoint)
        self.note(t, f"{endpoint}_healed")

    def error(self, endpoint: Endpoint, t: float) -> tuple[ApiError, dict[str, str]] | None:
        """An injected error for this request (with its headers), or ``None``."""
        spec = getattr(self.faults, endpoint)
        assert isinstance(spec, EndpointFaults)
        if endpoint in self._healed or spec.error_rate <= 0 or self._errors.get(endpoint, 0) >= spec.max_errors:
            return None
        if self.rng(f"{endpoint}_error").random() >= spec.error_rate:
            return None
        self._errors[endpoint] = self._errors.get(endpoint, 0) + 1
        self.note(t, f"{endpoint}_{spec.status}", endpoint=endpoint, status=spec.status)
        if spec.status == 429:
            error = ApiError(429, "Rate limit reached for requests.", type="requests", code="rate_limit_exceeded")
            return error, {"retry-after": f"{spec.retry_after:g}"}
        if spec.status == 503:
            return ApiError(503, "The server is overloaded or not ready yet.", type="server_error"), {}
        return server_error(), {}

    def accept_race(self, call_id: str, t: float) -> ApiError | None:
        """A 404 for one of the first ``accept_404_race`` accepts."""
        if self._races_left <= 0:
            return None
        self._races_left -= 1
        self.note(t, "accept_404_race")
        return call_not_found(call_id)

    def answer_lost(self, t: float) -> bool:
        """True for one of the first ``accept_answer_lost`` accepts that took effect: its answer is lost."""
        if self._answers_lost >= self.faults.accept_answer_lost:
            return False
        self._answers_lost += 1
        self.note(t, "accept_answer_lost")
        return True

    # ---- the model ------------------------------------------------------------------------------

    def response_failure(self, source: Literal["client", "auto"], says: str, t: float) -> ResponseFailure | None:
        """How this in-band response goes wrong (the first matching rule with uses left), or ``None``."""
        for key in ("any", source):
            self._responses[key] = self._responses.get(key, 0) + 1
        for i, rule in enumerate(self.faults.response_failures):
            if self._failures_left[i] <= 0 or rule.source not in ("any", source):
                continue
            if rule.nth is not None and self._responses[rule.source] != rule.nth:
                continue
            if rule.says is not None and rule.says.casefold() not in says.casefold():
                continue
            self._failures_left[i] -= 1
            self.note(t, f"response_{rule.status}", detail=rule.detail, source=source)
            return rule
        return None

    # ---- sideband ------------------------------------------------------------------------------

    def drop_delay(self) -> float | None:
        """Nominal seconds after this attach at which to drop the socket, or ``None``."""
        at = self.faults.drop_sideband_at
        if at is None or self.drops_left <= 0:
            return None
        self.drops_left -= 1
        return self.rng("drop").uniform(0.0, RANDOM_DROP_WINDOW) if at == "random" else at

    def malformed(self, event: dict[str, Any], t: float) -> MalformedKind | None:
        """What to do wrong with this outgoing server event, if anything."""
        if self.faults.malformed_events <= 0 or self._malformed >= self.faults.malformed_max:
            return None
        rng = self.rng("malformed")
        if rng.random() >= self.faults.malformed_events:
            return None
        kind = rng.choice(self.faults.malformed_kinds)
        self._malformed += 1
        self.note(t, f"malformed_{kind}", event_type=event.get("type"))
        return kind

    def bad_frame(self, kind: MalformedKind, event: dict[str, Any]) -> str:
        """The extra frame for ``invalid_json``, ``unknown_type`` and ``missing_fields``."""
        if kind == "invalid_json":
            return self.rng("malformed").choice(_INVALID_JSON)
        field = _STRIPPABLE.get(str(event.get("type")))
        if kind == "missing_fields" and field is not None:
            stripped = {k: v for k, v in event.items() if k != field}
            stripped["event_id"] = f"{event.get('event_id', 'event')}_stripped"
            return json.dumps(stripped)
        unknown = {"type": "sim.unknown_event", "event_id": f"{event.get('event_id', 'event')}_unknown", "x": 1}
        return json.dumps(unknown)
