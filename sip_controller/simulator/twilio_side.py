"""The Twilio stand-in: Twilio Programmable Voice on the simulator's loopback server, beside OpenAI's side.

``Simulator(..., twilio=TwilioAccount(...))`` serves Twilio's Calls API (:mod:`.twilio_api`) at the simulator's
origin (``TWILIO_API_BASE_URL`` = ``sim.twilio.base_url``) and keeps one :class:`~.twilio_records.TwilioCall`
per call in ``sim.twilio.calls``:

- **Outbound**: the controller creates a call (``POST /2010-04-01/Accounts/{AccountSid}/Calls.json``); the
  number it calls answers as scripted with :meth:`TwilioSide.script` (a :class:`~.twilio_spec.Callee` per call
  to that number, in order, the last one repeating; ``account.default_callee`` otherwise).
- **Inbound**: a test rings one of the account's numbers with :meth:`TwilioSide.ring_number`; the stand-in
  POSTs the number's voice URL (:meth:`TwilioSide.set_voice_url`) as Twilio does and runs the TwiML answered.

Every request the stand-in makes to the controller (voice URL, status, AMD, ``<Dial action>``, ``referUrl``,
recording callbacks) is form-encoded and signed with ``X-Twilio-Signature`` by the official ``twilio``
package's ``RequestValidator.compute_signature`` over the exact URL it requests, with the account's auth
token; it carries ``I-Twilio-Idempotency-Token`` and Twilio's user agent. A ``<Dial><Sip>`` to
``sip:<project>@sip.api.openai.com`` becomes an incoming call on the OpenAI side
(:meth:`Simulator.place_call <sip_controller.simulator.core.Simulator.place_call>` with the INVITE's headers:
``From``, ``To``, ``Call-ID``, ``X-Twilio-AccountSid``, ``X-Twilio-CallSid``, then the URI's own ``X-`` headers).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlencode

import httpx
from twilio.request_validator import RequestValidator

from .records import SimCall
from .scenario import E164, CallSpec
from .twilio_engine import ACCEPT_GRACE_S, CallEngine, CallOptions, new_sid
from .twilio_records import TWIML_KEPT, ApiRequest, Callback, TwilioCall, TwimlRun
from .twilio_spec import Callee, InboundCall
from .twilio_twiml import MAX_BYTES, Dial, Document, TwimlError, parse_twiml

DEFAULT_NUMBER = "+18005550100"
USER_AGENT = "TwilioProxy/1.1"
_E164 = re.compile(E164)
_TWIML_TYPES = ("text/xml", "application/xml", "text/html")


@dataclass
class TwilioNumber:
    """One of the account's phone numbers: where its voice webhook goes (``A call comes in``) and its status
    callback (Twilio sends it the ``completed`` event only)."""

    voice_url: str | None = None
    voice_method: str = "POST"
    status_callback: str | None = None
    status_method: str = "POST"


@dataclass
class TwilioAccount:
    """The account the stand-in plays: its credentials, its numbers, and who answers numbers nobody scripted."""

    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    #: API keys (``SK…`` → secret), accepted for HTTP Basic auth like the account SID and auth token
    api_keys: dict[str, str] = field(default_factory=dict)
    numbers: dict[str, TwilioNumber] = field(default_factory=lambda: {DEFAULT_NUMBER: TwilioNumber()})
    default_callee: Callee = field(default_factory=Callee)
    #: real seconds the stand-in waits for the controller's answer to one of its requests (Twilio: 15)
    webhook_timeout: float = 15.0
    #: nominal seconds from a recorded call's end to its recording callback (Twilio stores the file first)
    recording_delay: float = 2.0


class OpenAiSide(Protocol):
    """What the stand-in uses of the :class:`~sip_controller.simulator.core.Simulator` it is part of."""

    @property
    def base_url(self) -> str: ...
    @property
    def time_scale(self) -> float: ...
    @property
    def project_id(self) -> str: ...
    @property
    def task_errors(self) -> list[BaseException]: ...
    @property
    def calls(self) -> dict[str, SimCall]: ...
    def now(self) -> float: ...
    async def place_call(self, spec: CallSpec, *, sip_headers: Sequence[tuple[str, str]] | None = None) -> SimCall: ...
    async def hang_up(self, call_id: str) -> bool: ...
    async def wait_accepted(self, call_id: str, timeout: float) -> bool: ...


class TwilioSide:
    """The stand-in's state and behaviour (``sim.twilio``); the Calls API routes are :attr:`routes`."""

    def __init__(self, sim: OpenAiSide, account: TwilioAccount) -> None:
        self.sim = sim
        self.account = account
        self.calls: dict[str, TwilioCall] = {}
        self._engines: dict[str, CallEngine] = {}
        self._callees: dict[str, list[Callee]] = {}
        self._validator = RequestValidator(account.auth_token)
        self._client: httpx.AsyncClient | None = None
        #: Calls API requests refused before any call existed (bad credentials, bad parameters, unknown sids)
        self.refused: list[ApiRequest] = []

    # ---- wiring ------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Where the Calls API is: ``TWILIO_API_BASE_URL`` for the controller (the simulator's origin)."""
        return self.sim.base_url.removesuffix("/v1")

    @property
    def numbers(self) -> dict[str, TwilioNumber]:
        return self.account.numbers

    @property
    def task_errors(self) -> list[BaseException]:
        return self.sim.task_errors

    @property
    def time_scale(self) -> float:
        return self.sim.time_scale

    @property
    def recording_delay(self) -> float:
        return self.account.recording_delay

    def now(self) -> float:
        return self.sim.now()

    def scaled(self, seconds: float) -> float:
        return seconds * self.sim.time_scale

    @property
    def project_id(self) -> str:
        return self.sim.project_id

    def has_voice_url(self, number: str) -> tuple[str, str] | None:
        """(URL, method) of a number's voice webhook, or ``None`` when it has none."""
        configured = self.numbers.get(number)
        if configured is None or configured.voice_url is None:
            return None
        return configured.voice_url, configured.voice_method

    def leg(self, call_id: str) -> SimCall | None:
        return self.sim.calls.get(call_id)

    async def hang_up_leg(self, call_id: str) -> None:
        await self.sim.hang_up(call_id)

    async def wait_answered(self, call_id: str, timeout: float) -> bool:
        return await self.sim.wait_accepted(call_id, timeout)

    def start(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def stop(self) -> None:
        for engine in list(self._engines.values()):
            await engine.shutdown()

    # ---- scripting -----------------------------------------------------------------------------------

    def script(self, number: str, *callees: Callee) -> None:
        """Who answers the next calls to ``number``: one callee per call in order, the last one repeating."""
        if not _E164.match(number):
            raise ValueError(f"{number!r} is not E.164")
        if not callees:
            raise ValueError("script at least one callee")
        self._callees[number] = list(callees)

    def callee_for(self, number: str) -> Callee:
        queue = self._callees.get(number)
        if not queue:
            return self.account.default_callee
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def set_voice_url(self, number: str, url: str, *, method: str = "POST", status_callback: str | None = None) -> None:
        """Configure a number's ``A call comes in`` webhook (adding the number to the account if new)."""
        if not _E164.match(number):
            raise ValueError(f"{number!r} is not E.164")
        self.numbers[number] = TwilioNumber(voice_url=url, voice_method=method, status_callback=status_callback)

    # ---- calls ---------------------------------------------------------------------------------------

    def _register(self, record: TwilioCall, engine: CallEngine) -> TwilioCall:
        self.calls[record.sid] = record
        self._engines[record.sid] = engine
        engine.start()
        return record

    def place(self, to: str, from_: str, options: CallOptions, *, name: str | None = None) -> TwilioCall:
        """An outbound call (the Calls API's create, validated): it starts at once, ``queued``."""
        record = TwilioCall(
            sid=new_sid("CA"), account_sid=self.account.account_sid, direction="outbound-api", from_=from_, to=to,
            name=name or f"outbound {to}", created_at=self.now(),
        )  # fmt: skip
        return self._register(record, CallEngine(self, record, options, callee=self.callee_for(to)))

    def ring_number(self, caller: InboundCall) -> TwilioCall:
        """A person calls one of the account's numbers (``caller.to``): the voice webhook is POSTed and its TwiML
        run; ``caller.steps`` is their script once bridged to OpenAI. Returns at once, the call ``ringing``."""
        number = self.numbers.get(caller.to)
        if number is None:
            raise ValueError(f"{caller.to} is not one of the account's numbers ({', '.join(self.numbers)})")
        record = TwilioCall(
            sid=new_sid("CA"), account_sid=self.account.account_sid, direction="inbound", from_=caller.from_,
            to=caller.to, name=caller.name, created_at=self.now(), status="ringing",
        )  # fmt: skip
        options = CallOptions(
            url=number.voice_url,
            method=number.voice_method,
            status_callback=number.status_callback,
            status_method=number.status_method,
        )
        return self._register(record, CallEngine(self, record, options, caller=caller))

    def engine(self, sid: str) -> CallEngine | None:
        return self._engines.get(sid)

    async def wait_ended(self, sid: str, timeout: float) -> TwilioCall:
        """Wait until the call and its final callbacks are done; ``TimeoutError`` otherwise."""
        record = self.calls[sid]
        async with asyncio.timeout(timeout):
            await record.ended.wait()
        return record

    async def place_leg(self, engine: CallEngine, dial: Dial, headers: list[tuple[str, str]]) -> SimCall:
        """The OpenAI side receives the INVITE: an incoming call with these headers, running the far party's
        script (the callee's, or the inbound caller's)."""
        record = engine.rec
        name = f"{record.name} · openai leg {len(record.bridges)}"
        steps, opening = engine.script.for_leg()  # what is left of the script (#16: the call may have been parked)
        # it rings until Twilio gives up on it (the Dial's timeout, and the grace the controller's accept is given)
        ring = dial.timeout + 2 * ACCEPT_GRACE_S / self.time_scale
        if engine.callee is not None:
            shown = dial.caller_id if dial.caller_id and _E164.match(dial.caller_id) else record.from_
            spec = engine.callee.leg_spec(name, shown, record.to, ring, steps=steps, opening=opening)
        else:
            assert engine.caller is not None
            spec = engine.caller.leg_spec(name, ring, steps=steps, opening=opening)
        return await self.sim.place_call(spec, sip_headers=headers)

    # ---- the stand-in's own requests ---------------------------------------------------------------------

    def sign(self, url: str, params: dict[str, str]) -> str:
        """``X-Twilio-Signature`` for a request to ``url`` with these form parameters (none for a GET)."""
        return str(self._validator.compute_signature(url, params))

    async def _request(self, url: str, method: str, params: dict[str, str]) -> tuple[int, str, bytes, str | None]:
        """Send one signed request; (HTTP status or 0, content type, body up to 64 KiB + 1, error)."""
        if self._client is None:
            raise RuntimeError("the Twilio stand-in is not running")
        if method == "GET":
            target = url + ("&" if "?" in url else "?") + urlencode(params)
            signed: dict[str, str] = {}
            content = None
        else:
            target, signed, content = url, params, urlencode(params).encode()
        headers = {
            "X-Twilio-Signature": self.sign(target, signed),
            "I-Twilio-Idempotency-Token": secrets.token_hex(16),
            "User-Agent": USER_AGENT,
        }
        if content is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            request = self._client.build_request(
                method, target, content=content, headers=headers, timeout=self.account.webhook_timeout
            )
            response = await self._client.send(request, stream=True)
            try:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BYTES:
                        break
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            return 0, "", b"", f"{type(exc).__name__}: {exc}"[:200]
        return response.status_code, response.headers.get("content-type", ""), body, None

    async def send(self, record: TwilioCall, kind: str, url: str, method: str, params: dict[str, str]) -> Callback:
        """A callback whose answer only counts as delivered (2xx) or not."""
        callback = Callback(self.now(), kind, url, method, dict(params))
        record.callbacks.append(callback)
        status, _, _, error = await self._request(url, method, params)
        callback.status, callback.error = status, error
        if not 200 <= status < 300:
            record.problem(f"{kind} callback to {url}: " + (error or f"HTTP {status}"))
        return callback

    async def fetch_twiml(
        self, record: TwilioCall, kind: str, url: str, method: str, params: dict[str, str]
    ) -> Document | None:
        """Ask ``url`` what to do; the TwiML answered, or ``None`` (recorded as a problem) when there is none."""
        callback = Callback(self.now(), kind, url, method, dict(params))
        record.callbacks.append(callback)
        status, content_type, body, error = await self._request(url, method, params)
        callback.status, callback.error = status, error
        if error is not None or not 200 <= status < 300:
            record.problem(f"11200: {kind} URL {url}: " + (error or f"HTTP {status}"))
            return None
        if content_type.split(";")[0].strip().lower() not in _TWIML_TYPES:
            record.problem(f"12300: {kind} URL {url} answered {content_type or 'no content type'}, not TwiML")
            return None
        return self.read_twiml(record, body, kind)

    def read_twiml(self, record: TwilioCall, text: str | bytes, source: str) -> Document | None:
        """Parse TwiML for ``record``, keeping it in the record; ``None`` (and a problem) when it is refused."""
        shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        run = TwimlRun(self.now(), source, shown[:TWIML_KEPT], [])
        record.twiml.append(run)
        try:
            document = parse_twiml(text)
        except TwimlError as exc:
            run.error = str(exc)
            record.problem(f"TwiML from {source} refused: {exc}")
            return None
        run.verbs = document.names()
        record.problems.extend(f"TwiML from {source}: warning {w}" for w in document.warnings)
        return document
