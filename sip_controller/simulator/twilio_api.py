"""The Twilio stand-in's REST face: Twilio's Calls API, in Twilio's shapes.

- ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json``: create (form-encoded: ``To``, ``From``, ``Url`` +
  ``Method`` or ``Twiml``, ``StatusCallback``, ``StatusCallbackEvent`` (repeated: ``initiated``, ``ringing``,
  ``answered``, ``completed``), ``StatusCallbackMethod``, ``Timeout``, ``MachineDetection`` (``Enable`` |
  ``DetectMessageEnd``), ``MachineDetectionTimeout``, ``AsyncAmd``, ``AsyncAmdStatusCallback`` (+ ``Method``),
  ``Record``, ``RecordingChannels``, ``RecordingStatusCallback`` (+ ``Method``)); answers ``201`` and the call.
- ``GET …/Calls/{CallSid}.json``: the call as it is now; ``GET …/Calls.json``: every call, newest first.
- ``POST …/Calls/{CallSid}.json``: update: ``Status=completed|canceled`` (hang up / stop ringing), ``Twiml`` or
  ``Url`` (+ ``Method``): redirect a live call to new TwiML.

HTTP Basic auth: the account SID and auth token, or an API key SID (``SK…``) and its secret; anything else is
``401`` with Twilio's 20003. Errors are Twilio's JSON: ``{"code", "message", "more_info", "status"}``: 21201 /
21213 (no To / From), 21211 / 21212 (To / From not a phone number), 21210 (From not one of the account's
numbers), 21205 (no or bad ``Url``), 21609 (bad ``StatusCallback``), 21200 (any other bad parameter), 20404
(no such call), 21220 (redirecting a call that is not live). Requests refused before a call exists are kept in
``sim.twilio.refused``; the others in the call's record.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .twilio_engine import API_VERSION, CallOptions
from .twilio_records import ApiRequest, TwilioCall
from .twilio_side import _E164, TwilioSide

PREFIX = f"/{API_VERSION}/Accounts/{{account_sid}}"
MAX_FORM_BYTES = 256 * 1024
STATUS_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})
MACHINE_DETECTION = ("Enable", "DetectMessageEnd")

Form = list[tuple[str, str]]


class TwilioApiError(Exception):
    """One Twilio error answer."""

    def __init__(self, status: int, code: int, message: str) -> None:
        self.status, self.code, self.message = status, code, message
        super().__init__(message)

    def response(self) -> JSONResponse:
        body = {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }
        headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def _wall(side: TwilioSide, t: float | None) -> str | None:
    if t is None:
        return None
    moment = datetime.now(UTC) - timedelta(seconds=max(0.0, side.now() - t))
    return moment.strftime("%a, %d %b %Y %H:%M:%S +0000")


def call_json(side: TwilioSide, rec: TwilioCall) -> dict[str, Any]:
    """A call as Twilio's Calls API shows it."""
    uri = f"/{API_VERSION}/Accounts/{rec.account_sid}/Calls/{rec.sid}"
    sub = ("notifications", "recordings", "payments", "events", "siprec", "streams", "transcriptions",
           "user_defined_message_subscriptions", "user_defined_messages")  # fmt: skip
    owned = rec.from_ if rec.direction != "inbound" else rec.to
    return {
        "account_sid": rec.account_sid,
        "annotation": None,
        "answered_by": rec.answered_by,
        "api_version": API_VERSION,
        "caller_name": None,
        "date_created": _wall(side, rec.created_at),
        "date_updated": _wall(side, side.now()),
        "direction": rec.direction,
        "duration": None if rec.duration is None else str(rec.duration),
        "end_time": _wall(side, rec.ended_at),
        "forwarded_from": None,
        "from": rec.from_,
        "from_formatted": rec.from_,
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": "PN" + owned.encode().hex().ljust(32, "0")[:32],
        "price": None,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": rec.sid,
        "start_time": _wall(side, rec.answered_at),
        "status": rec.status,
        "subresource_uris": {name: f"{uri}/{name}.json" for name in sub},
        "to": rec.to,
        "to_formatted": rec.to,
        "trunk_sid": None,
        "uri": f"{uri}.json",
    }


def _authenticate(side: TwilioSide, request: Request) -> None:
    account = side.account
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    denied = TwilioApiError(401, 20003, "Authenticate")
    if scheme.lower() != "basic":
        raise denied
    try:
        user, colon, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        raise denied from None
    if not colon:
        raise denied
    if user == account.account_sid:
        secret = account.auth_token
    elif user in account.api_keys:
        secret = account.api_keys[user]
    else:
        raise denied
    if not hmac.compare_digest(password.encode(), secret.encode()):
        raise denied
    if request.path_params["account_sid"] != account.account_sid:
        raise denied  # the credentials are good, but for another account


async def _form(request: Request) -> Form:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise TwilioApiError(413, 21200, "The request body is too large.")
    if not body:
        return []
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=500)
    except (UnicodeDecodeError, ValueError):
        raise TwilioApiError(400, 21200, "The request body is not a valid form.") from None


def _one(form: Form, name: str) -> str | None:
    values = [value for key, value in form if key == name]
    return values[-1] if values else None


def _url(value: str | None, name: str, code: int) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TwilioApiError(400, code, f"{name} is not a valid URL: {value[:200]}")
    return value


def _method(form: Form, name: str) -> str:
    value = (_one(form, name) or "POST").upper()
    if value not in ("GET", "POST"):
        raise TwilioApiError(400, 21200, f"{name} must be GET or POST, not {value[:20]!r}.")
    return value


def _int(form: Form, name: str, default: int, low: int, high: int) -> int:
    raw = _one(form, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TwilioApiError(400, 21200, f"{name} must be an integer, not {raw[:20]!r}.") from None
    if not low <= value <= high:
        raise TwilioApiError(400, 21200, f"{name} must be between {low} and {high}.")
    return value


def _flag(form: Form, name: str) -> bool:
    return (_one(form, name) or "false").strip().lower() == "true"


def create_options(side: TwilioSide, form: Form) -> tuple[str, str, CallOptions]:
    """Validate a create's form as Twilio does: (To, From, options); raises :class:`TwilioApiError`."""
    to, from_ = _one(form, "To"), _one(form, "From")
    if not to:
        raise TwilioApiError(400, 21201, "No 'To' number is specified")
    if not _E164.match(to):
        raise TwilioApiError(400, 21211, f"The 'To' number {to[:40]} is not a valid phone number.")
    if not from_:
        raise TwilioApiError(400, 21213, "No 'From' number is specified")
    if not _E164.match(from_):
        raise TwilioApiError(
            400, 21212, f"The 'From' number {from_[:40]} is not a valid phone number, shortcode, or alphanumeric "
            "sender ID.",
        )  # fmt: skip
    if from_ not in side.numbers:
        raise TwilioApiError(
            400, 21210, f"The source phone number provided, {from_}, is not yet verified for your account. You may "
            "only make calls from phone numbers that you've verified or purchased from Twilio.",
        )  # fmt: skip
    twiml, url = _one(form, "Twiml"), _url(_one(form, "Url"), "Url", 21205)
    if not twiml and url is None:
        raise TwilioApiError(400, 21205, "Url parameter is required.")
    events = [value for key, value in form if key == "StatusCallbackEvent"]
    for value in events:
        for event in value.split(" "):
            if event and event not in STATUS_EVENTS:
                raise TwilioApiError(400, 21200, f"StatusCallbackEvent {event[:30]!r} is not one of "
                                     "initiated, ringing, answered, completed.")  # fmt: skip
    detection = _one(form, "MachineDetection") or None
    if detection is not None and detection not in MACHINE_DETECTION:
        raise TwilioApiError(400, 21200, f"MachineDetection must be Enable or DetectMessageEnd, not {detection[:30]!r}")
    channels = _one(form, "RecordingChannels") or "mono"
    if channels not in ("mono", "dual"):
        raise TwilioApiError(400, 21200, "RecordingChannels must be mono or dual.")
    options = CallOptions(
        url=url,
        method=_method(form, "Method"),
        twiml=twiml or None,
        status_callback=_url(_one(form, "StatusCallback"), "StatusCallback", 21609),
        status_events=frozenset(e for value in events for e in value.split(" ") if e) or frozenset({"completed"}),
        status_method=_method(form, "StatusCallbackMethod"),
        timeout=_int(form, "Timeout", 60, 1, 600),
        machine_detection=detection,
        amd_timeout=_int(form, "MachineDetectionTimeout", 30, 3, 59),
        async_amd=_flag(form, "AsyncAmd"),
        async_amd_callback=_url(_one(form, "AsyncAmdStatusCallback"), "AsyncAmdStatusCallback", 21609),
        async_amd_method=_method(form, "AsyncAmdStatusCallbackMethod"),
        record=_flag(form, "Record"),
        recording_channels=channels,
        recording_callback=_url(_one(form, "RecordingStatusCallback"), "RecordingStatusCallback", 21609),
        recording_method=_method(form, "RecordingStatusCallbackMethod"),
    )
    return to, from_, options


def calls_api_routes(side: TwilioSide) -> list[BaseRoute]:
    """The Calls API routes of one stand-in."""

    def not_found(request: Request) -> TwilioApiError:
        return TwilioApiError(404, 20404, f"The requested resource {request.url.path} was not found")

    async def create(request: Request) -> Response:
        form: Form = []
        try:
            _authenticate(side, request)
            form = await _form(request)
            to, from_, options = create_options(side, form)
        except TwilioApiError as exc:
            side.refused.append(ApiRequest(side.now(), "POST", request.url.path, form, exc.status, exc.code))
            return exc.response()
        record = side.place(to, from_, options)
        record.requests.append(ApiRequest(side.now(), "POST", request.url.path, form, 201))
        return JSONResponse(call_json(side, record), status_code=201)

    async def list_calls(request: Request) -> Response:
        try:
            _authenticate(side, request)
        except TwilioApiError as exc:
            return exc.response()
        calls = sorted(side.calls.values(), key=lambda c: c.created_at, reverse=True)
        uri = request.url.path
        return JSONResponse({
            "calls": [call_json(side, c) for c in calls], "end": max(len(calls) - 1, 0), "first_page_uri": uri,
            "next_page_uri": None, "page": 0, "page_size": 50, "previous_page_uri": None, "start": 0, "uri": uri,
        })  # fmt: skip

    def lookup(request: Request) -> TwilioCall:
        _authenticate(side, request)
        record = side.calls.get(request.path_params["call_sid"])
        if record is None:
            raise not_found(request)
        return record

    async def fetch(request: Request) -> Response:
        try:
            record = lookup(request)
        except TwilioApiError as exc:
            side.refused.append(ApiRequest(side.now(), "GET", request.url.path, [], exc.status, exc.code))
            return exc.response()
        record.requests.append(ApiRequest(side.now(), "GET", request.url.path, [], 200))
        return JSONResponse(call_json(side, record))

    async def update(request: Request) -> Response:
        form: Form = []
        record: TwilioCall | None = None
        try:
            record = lookup(request)
            form = await _form(request)
            apply_update(side, record, form)
        except TwilioApiError as exc:
            refused = ApiRequest(side.now(), "POST", request.url.path, form, exc.status, exc.code)
            (record.requests if record is not None else side.refused).append(refused)
            return exc.response()
        record.requests.append(ApiRequest(side.now(), "POST", request.url.path, form, 200))
        return JSONResponse(call_json(side, record))

    return [
        Route(f"{PREFIX}/Calls.json", create, methods=["POST"]),
        Route(f"{PREFIX}/Calls.json", list_calls, methods=["GET"]),
        Route(f"{PREFIX}/Calls/{{call_sid}}.json", fetch, methods=["GET"]),
        Route(f"{PREFIX}/Calls/{{call_sid}}.json", update, methods=["POST"]),
    ]


def apply_update(side: TwilioSide, record: TwilioCall, form: Form) -> None:
    """``Status`` ends the call; ``Twiml`` / ``Url`` redirect it. Raises :class:`TwilioApiError`."""
    engine = side.engine(record.sid)
    assert engine is not None
    status = _one(form, "Status")
    twiml, url = _one(form, "Twiml"), _url(_one(form, "Url"), "Url", 21205)
    if status is not None and status not in ("completed", "canceled"):
        raise TwilioApiError(400, 21200, f"Status must be completed or canceled, not {status[:20]!r}.")
    if status is not None:
        if not record.is_ended:
            engine.cancel_or_complete(status)
        return
    if not twiml and url is None:
        raise TwilioApiError(400, 21200, "Nothing to update: give Status, Twiml or Url.")
    live = record.status == "in-progress" or (record.direction == "inbound" and record.status == "ringing")
    if record.is_ended or not live:
        raise TwilioApiError(400, 21220, "Call is not in-progress. Cannot redirect.")
    if twiml:
        document = side.read_twiml(record, twiml, "update")
        if document is None:
            engine.finish("completed", "twiml", error=12100, message="the TwiML of an update was refused")
            return
        engine.redirect(document, "update")
        return
    assert url is not None
    engine.redirect_to_url(url, _method(form, "Method"))
