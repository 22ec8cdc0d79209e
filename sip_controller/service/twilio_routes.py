"""Twilio Programmable Voice (#16): a number's voice webhook, status callbacks, and the calls we place.

- ``POST /twilio/voice``: a number's voice webhook (``A call comes in``). Signed by Twilio (403 and nothing else
  otherwise); answered with TwiML that bridges the call into OpenAI's SIP endpoint with a fresh correlation id in
  ``X-Sipctl-Correlation``. The ``realtime.call.incoming`` webhook carrying that id is matched to the Twilio call
  (``calls/registry.py``): its report has the CallSid and the numbers as Twilio saw them.
- ``POST /twilio/status``: status callbacks (and answering-machine results) of those calls, signed. A call we
  placed that ends unanswered is reported with ``no_answer``, ``busy``, ``failed`` or ``canceled``.
- ``POST /twilio/recording``: recording callbacks of the calls a profile records (``recording.enabled``), signed,
  a route of their own (their parameters are not a call status). The recording goes on the call's report, or, when
  the report already went out, into a late ``call.recording`` event.
- ``POST /v1/outbound`` (admin API, bearer token): place a call with a profile and its variables through Twilio's
  Calls API; ``Idempotency-Key`` makes a repeated request place nothing more. ``GET /v1/outbound/{id}``: its state.
  ``POST /v1/outbound/{id}/cancel``: stop a call that is still queued or ringing (reported as ``canceled``).

Without Twilio configured (``TWILIO_ACCOUNT_SID`` …), every route answers 404.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sip_controller.calls import parking as parking_state
from sip_controller.calls import routing
from sip_controller.calls.commands import route_machine_detection
from sip_controller.calls.park_report import close_if_parked
from sip_controller.calls.parking import PARKED_PATH
from sip_controller.calls.report import mask_number
from sip_controller.calls.states import EndedReason
from sip_controller.config import E164, Settings, TwilioCredentials
from sip_controller.service import parking
from sip_controller.service.admin import AdminAuth
from sip_controller.state.records import StoreError
from sip_controller.state.store import Store
from sip_controller.state.twilio_calls import NewTwilioCall, TwilioCallRow
from sip_controller.telephony.callbacks import BadCallback, RecordingCallback, StatusCallback, VoiceRequest
from sip_controller.telephony.calls_api import CallRequest, TwilioCalls, TwilioError
from sip_controller.telephony.signatures import SIGNATURE_HEADER, TwilioSignatures
from sip_controller.telephony.twiml import bridge_to_openai, listen_parked, new_correlation_id

#: what a Twilio callback's form is parsed into
P = TypeVar("P")

log = structlog.get_logger("sip_controller.service.twilio")

VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/status"
RECORDING_PATH = "/twilio/recording"
MAX_FORM_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY = 200
MAX_VARIABLES_BYTES = 8 * 1024


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _twiml(xml: str) -> Response:
    return Response(xml, media_type="application/xml")


class OutboundRefused(ValueError):
    """A ``POST /v1/outbound`` body that cannot be placed; the message says what to fix."""


def outbound_request(settings: Settings, body: object) -> tuple[str, str, str, dict[str, str]]:
    """``(to, from, profile, variables)`` of a valid request body, or :class:`OutboundRefused`."""
    if not isinstance(body, dict):
        raise OutboundRefused('the body must be JSON: {"to": "+14155550123", "profile": "...", "variables": {...}}')
    unknown = sorted(set(body) - {"to", "from", "profile", "variables"})
    if unknown:
        raise OutboundRefused(f"unknown field(s) {', '.join(unknown)}; use to, from, profile, variables")
    to = body.get("to")
    if not isinstance(to, str) or not E164.fullmatch(to):
        raise OutboundRefused(f"to: {str(to)[:40]!r} is not an E.164 number; write +, the country code and the number")
    if any(fnmatchcase(to, pattern) for pattern in settings.twilio.do_not_call):
        raise OutboundRefused("to: the number is on the do-not-call list (twilio.do_not_call); it is never called")
    profile_name = body.get("profile", settings.default_profile)
    if not isinstance(profile_name, str) or profile_name not in settings.profiles:
        raise OutboundRefused(f"profile: {str(profile_name)[:60]!r} is not a profile; use one of "
                              f"{', '.join(sorted(settings.profiles))}")  # fmt: skip
    profile = settings.profiles[profile_name]
    variables = body.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise OutboundRefused('variables: a JSON object of strings, e.g. {"first_name": "Ada"}')
    if len(json.dumps(variables)) > MAX_VARIABLES_BYTES:
        raise OutboundRefused(f"variables: more than {MAX_VARIABLES_BYTES} bytes")
    undeclared = sorted(set(variables) - set(profile.variables))
    missing = sorted(set(profile.variables) - set(variables))
    if undeclared or missing:
        parts = ([f"not declared by profile {profile_name!r}: {', '.join(undeclared)}"] if undeclared else []) + (
            [f"missing: {', '.join(missing)}"] if missing else []
        )
        raise OutboundRefused(
            f"variables: {'; '.join(parts)} (the profile declares: {', '.join(profile.variables) or 'none'})"
        )
    given_from = body.get("from")
    if "from" in body and (not isinstance(given_from, str) or not E164.fullmatch(given_from)):
        raise OutboundRefused(f"from: {str(given_from)[:40]!r} is not an E.164 number; leave it out to use the "
                              "configured caller ID")  # fmt: skip
    caller_id = given_from or profile.outbound.from_number or settings.twilio.from_number
    if not isinstance(caller_id, str) or not E164.fullmatch(caller_id):
        raise OutboundRefused(
            "from: no caller ID; set twilio.from_number (or the profile's outbound.from_number) to a number of "
            "your Twilio account, or send from as E.164"
        )
    return to, caller_id, profile_name, {str(k): v for k, v in variables.items()}


async def _callback_row(store: Store, call_sid: str, leg: str | None, *, strict: bool) -> TwilioCallRow | None:
    """The Twilio call a callback is about: by its CallSid, else by the ``leg`` our callback URL carries (a callback
    that came before Twilio's answer to our request was stored); ``strict``: not a leg whose row has another CallSid."""
    row = await store.get_twilio_call(call_sid=call_sid)
    if row is None and leg:
        row = await store.get_twilio_call(id=leg)
        if strict and row is not None and row.call_sid not in (None, call_sid):
            return None
    return row


def outbound_view(row: TwilioCallRow, *, mask: bool) -> dict[str, Any]:
    """``POST``/``GET /v1/outbound`` answers: the request, Twilio's side and the call it became."""
    return {
        "id": row.id,
        "to": mask_number(row.to_number) if mask else row.to_number,
        "from": row.from_number,
        "profile": row.profile,
        "variables": row.variables,
        "call_sid": row.call_sid,
        "status": row.status,
        "answered_by": row.answered_by,
        "error_code": row.error_code,
        "call_id": row.call_id,
        "events": row.events,
        "park": parking_state.park_view(row.park),
    }


@dataclass(frozen=True)
class Placement:
    """What :func:`place_outbound` did: ``created`` False when the Idempotency-Key had placed a call before (``row``
    is that call; nothing was sent to Twilio now); ``error`` when Twilio refused or may not have placed it."""

    row: TwilioCallRow
    created: bool
    error: TwilioError | None = None


async def place_outbound(
    twilio: TwilioCredentials,
    settings: Settings,
    calls_api: TwilioCalls,
    store: Store,
    registry: Any,
    *,
    to: str,
    caller_id: str,
    profile_name: str,
    variables: Mapping[str, str],
    key: str | None,
    request_hash: str,
) -> Placement:
    """Place one validated outbound call (``POST /v1/outbound`` and the batch dialler): the Twilio call row first
    (once per ``key``), then Twilio's Calls API with the bridge and a signed status callback; a refused call is
    reported as ``failed`` through ``registry`` (the :class:`~sip_controller.calls.registry.CallRegistry`).
    Raises :class:`StoreError` when the store fails."""
    new = NewTwilioCall(
        id=f"out_{secrets.token_hex(8)}", correlation=new_correlation_id(), direction="outbound",
        status="requested", idempotency_key=key, request_hash=request_hash, profile=profile_name,
        from_number=caller_id, to_number=to, variables=variables,
    )  # fmt: skip
    row, created = await store.create_twilio_call(new)
    if not created:
        return Placement(row, created=False)
    profile = settings.profiles[profile_name]
    detection = profile.outbound.machine_detection
    status_url = f"{twilio.public_url}{STATUS_PATH}?leg={row.id}"
    recording_url = f"{twilio.public_url}{RECORDING_PATH}?leg={row.id}" if profile.recording.enabled else None
    placing = CallRequest(
        to=to,
        from_=caller_id,
        status_callback=status_url,
        twiml=bridge_to_openai(twilio.openai_project_id, row.correlation),
        timeout_s=settings.twilio.ring_timeout_s,
        machine_detection=None if detection == "off" else detection,
        # with a voicemail policy the call is bridged at once and the verdict comes while it goes on
        async_amd_callback=status_url if profile.outbound.voicemail is not None else None,
        recording_callback=recording_url,
    )
    try:
        placed = await calls_api.create(placing)
    except TwilioError as exc:
        log.warning("twilio.place_failed", twilio_id=row.id, status=exc.status, code=exc.code,
                    ambiguous=exc.ambiguous)  # fmt: skip
        failed = await store.update_twilio_call(
            row.id, status="failed", error_code=exc.code,
            event={"kind": "create", "status": "failed", "http_status": exc.status, "error_code": exc.code,
                   "ambiguous": exc.ambiguous},
        )  # fmt: skip
        if failed is not None and await store.link_twilio_call(failed.correlation, failed.id) is not None:
            registry.finish_unanswered(failed, "failed", detail=str(exc))
        return Placement(failed or row, created=True, error=exc)
    updated = await store.update_twilio_call(
        row.id, call_sid=placed.sid, status=placed.status, event={"kind": "create", "status": placed.status}
    )
    log.info("twilio.placed", twilio_id=row.id, call_sid=placed.sid, profile=profile_name)
    return Placement(updated or row, created=True)


def routes(
    twilio: TwilioCredentials | None,
    settings: Settings,
    auth: AdminAuth,
    runtime: Callable[[Request], Any],
    api: Callable[[Request], TwilioCalls | None],
) -> list[Route]:
    """``runtime(request)`` gives the app's Runtime (registry, store); ``api(request)`` the Calls API client."""
    signatures = TwilioSignatures(twilio.auth_token.get_secret_value(), twilio.public_url) if twilio else None
    mask = settings.reports.mask_caller

    async def signed_form(request: Request) -> dict[str, str] | Response:
        """The form Twilio posted, once its signature checks out against the public URL; else the 403."""
        assert signatures is not None
        assert twilio is not None  # parsed_callback answered 404 otherwise
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
            return PlainTextResponse("request too large", status_code=413)
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return PlainTextResponse("request too large", status_code=413)
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            return PlainTextResponse("forbidden", status_code=403)
        form = dict(pairs)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signatures.valid(path, pairs, signature) or form.get("AccountSid") != twilio.account_sid:
            log.warning("twilio.signature_refused", path=request.url.path, signed=bool(signature))
            return PlainTextResponse("forbidden", status_code=403)
        return form

    async def parsed_callback(request: Request, parse: Callable[[Mapping[str, str]], P]) -> P | Response:
        """A Twilio callback's form, signed and parsed by ``parse``; or the answer refusing it (404 without Twilio,
        403 unsigned, 400 malformed)."""
        if twilio is None:
            return _error(404, "not found")
        form = await signed_form(request)
        if isinstance(form, Response):
            return form
        try:
            return parse(form)
        except BadCallback as exc:
            return PlainTextResponse(str(exc), status_code=400)

    async def voice(request: Request) -> Response:
        call = await parsed_callback(request, VoiceRequest.parse)
        if isinstance(call, Response):
            return call
        assert twilio is not None  # parsed_callback answered 404 otherwise
        store: Store = runtime(request).store
        new = NewTwilioCall(
            id=f"in_{secrets.token_hex(8)}", correlation=new_correlation_id(), direction="inbound", status="ringing",
            call_sid=call.call_sid, from_number=call.caller, to_number=call.dialed,
        )  # fmt: skip
        try:
            row, created = await store.create_twilio_call(new)
        except StoreError as exc:
            log.warning("twilio.store_failed", error=str(exc)[:300])
            return PlainTextResponse("the call store is unavailable", status_code=503)
        log.info("twilio.voice", twilio_id=row.id, call_sid=call.call_sid, repeated=not created,
                 caller=mask_number(call.caller))  # fmt: skip
        # recorded when the profile the dialled number routes to records (header routes match later, on OpenAI's
        # webhook: a number routed by a header is recorded as its default profile says)
        profile = settings.profile(routing.profile_for_number(settings, call.dialed))
        recording_url = f"{twilio.public_url}{RECORDING_PATH}?leg={row.id}" if profile.recording.enabled else None
        return _twiml(bridge_to_openai(twilio.openai_project_id, row.correlation, recording_callback=recording_url))

    async def status(request: Request) -> Response:
        callback = await parsed_callback(request, StatusCallback.parse)
        if isinstance(callback, Response):
            return callback
        rt = runtime(request)
        store: Store = rt.store
        try:
            row = await _callback_row(store, callback.call_sid, request.query_params.get("leg"), strict=False)
            if row is None:
                log.warning("twilio.status_unknown_call", call_sid=callback.call_sid, status=callback.status)
                return _error(404, "no Twilio call of ours has this CallSid")
            row = await store.update_twilio_call(
                row.id, call_sid=callback.call_sid, status=callback.status or None,
                answered_by=callback.answered_by, error_code=callback.error_code, event=callback.event(),
            )  # fmt: skip
            assert row is not None
            log.info("twilio.status", twilio_id=row.id, status=callback.status, answered_by=callback.answered_by)
            if callback.answered_by is not None and row.call_id not in (None, row.id):
                # an answering-machine verdict for a call that reached OpenAI: its supervisor acts on it, here or,
                # through the store, on the replica that owns the call (a verdict before the call's webhook is read
                # from the row when the call starts)
                routed = await route_machine_detection(store, rt.registry, row.call_id, callback.answered_by)
                log.info("twilio.machine_detection", twilio_id=row.id, call_id=row.call_id, routed=routed)
            if callback.final and row.park is not None:  # ended while parked: the call's report goes out now
                closed = await close_if_parked(store, settings, row, now=time.time())
                if closed and (notifier := getattr(request.app.state, "notifier", None)) is not None:
                    notifier.kick()
            elif callback.final and row.direction == "outbound" and row.call_id is None:
                reason = callback.unanswered_reason or "failed"
                detail = None
                if callback.status == "completed":
                    detail = "answered, but the call never reached OpenAI (no realtime.call.incoming matched it)"
                elif callback.error_code is not None:
                    detail = f"Twilio error {callback.error_code}"
                if await store.link_twilio_call(row.correlation, row.id) is not None:
                    rt.registry.finish_unanswered(row, cast("EndedReason", reason), detail=detail)
        except StoreError as exc:
            log.warning("twilio.store_failed", error=str(exc)[:300])
            return _error(503, "the call store is unavailable; retry")
        if callback.final and (dialler := getattr(request.app.state, "dialler", None)) is not None:
            dialler.kick()  # a batch's row may be settled now (#16)
        return JSONResponse({"status": "recorded"})

    async def recording(request: Request) -> Response:
        callback = await parsed_callback(request, RecordingCallback.parse)
        if isinstance(callback, Response):
            return callback
        rt = runtime(request)
        store: Store = rt.store
        try:
            row = await _callback_row(store, callback.call_sid, request.query_params.get("leg"), strict=True)
            if row is None:
                log.warning("twilio.recording_unknown_call", call_sid=callback.call_sid,
                            recording_sid=callback.recording_sid)  # fmt: skip
                return _error(404, "no Twilio call of ours has this CallSid")
            row = await store.update_twilio_call(row.id, event=callback.event())
            assert row is not None
            log.info("twilio.recording", twilio_id=row.id, call_id=row.call_id, status=callback.status,
                     recording_sid=callback.recording_sid, duration_s=callback.duration_s)  # fmt: skip
            late = False
            report_row = parking_state.report_call_id(row.park) or row.call_id
            if callback.completed and report_row is not None:
                # the report written already: a late call.recording; not yet: the finish reads it from the row (a
                # parked call's report is on its first leg's row, #16)
                late = await rt.registry.late_recording(report_row, callback.report())
        except StoreError as exc:
            log.warning("twilio.store_failed", error=str(exc)[:300])
            return _error(503, "the call store is unavailable; retry")
        if late and (notifier := getattr(request.app.state, "notifier", None)) is not None:
            notifier.kick()
        return JSONResponse({"status": "recorded", "late": late})

    async def parked(request: Request) -> Response:
        """Twilio's listening round on a parked call (#16): the next TwiML (``service/parking.py``)."""
        if twilio is None:
            return _error(404, "not found")
        form = await signed_form(request)
        if isinstance(form, Response):
            return form
        twilio_id, spell = request.query_params.get("twilio_id", ""), request.query_params.get("spell", "")
        if not twilio_id or not spell.isdigit():
            return PlainTextResponse("twilio_id and spell are required", status_code=400)
        store: Store = runtime(request).store
        responses = getattr(request.app.state, "responses_api", None)
        try:
            xml = await parking.listen_answer(
                store, settings, twilio, responses, twilio_id=twilio_id, spell=int(spell), form=form, now=time.time(),
                after_bridge=request.query_params.get("after") == "bridge",
            )  # fmt: skip
        except parking.UnknownPark:
            log.warning("park.unknown_call", twilio_id=twilio_id[:40])
            return _error(404, "no parked Twilio call of ours has this id and CallSid")
        except StoreError as exc:
            # the store away for a moment: keep the line and listen again (nothing is counted this round)
            log.warning("twilio.store_failed", error=str(exc)[:300])
            return _twiml(listen_parked(f"{twilio.public_url}{request.url.path}?{request.url.query}", timeout_s=15))
        return _twiml(xml)

    async def place(request: Request) -> Response:
        if (denied := await auth.authorize(request, write=True)) is not None:
            return denied
        calls_api = api(request)
        if twilio is None or calls_api is None:
            return _error(404, "Twilio is not configured: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, "
                               "OPENAI_PROJECT_ID and SIPCTL_PUBLIC_URL")  # fmt: skip
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
            return _error(422, f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} characters")
        try:
            body = json.loads(await request.body() or b"null")
        except (ValueError, RecursionError):
            return _error(422, "the body must be JSON")
        try:
            to, caller_id, profile_name, variables = outbound_request(settings, body)
        except OutboundRefused as exc:
            return _error(422, str(exc))
        digest = hashlib.sha256(
            json.dumps([to, caller_id, profile_name, variables], sort_keys=True).encode()
        ).hexdigest()
        rt = runtime(request)
        try:
            placement = await place_outbound(
                twilio, settings, calls_api, rt.store, rt.registry, to=to, caller_id=caller_id,
                profile_name=profile_name, variables=variables, key=key, request_hash=digest,
            )  # fmt: skip
        except StoreError as exc:
            log.warning("twilio.store_failed", error=str(exc)[:300])
            return _error(503, "the call store is unavailable; retry")
        row = placement.row
        if not placement.created:
            if row.request_hash != digest:
                return _error(422, "Idempotency-Key was used for another request; use a new key for a new call")
            return JSONResponse({**outbound_view(row, mask=mask), "replayed": True})
        if (refused := placement.error) is not None:
            status_code = 422 if 400 <= refused.status < 500 and refused.status != 429 else 502
            return _error(status_code, str(refused), id=row.id, twilio_code=refused.code, ambiguous=refused.ambiguous)
        return JSONResponse(outbound_view(row, mask=mask), status_code=201)

    async def get_outbound(request: Request) -> Response:
        if (denied := await auth.authorize(request)) is not None:
            return denied
        if twilio is None:
            return _error(404, "Twilio is not configured")
        try:
            row = await runtime(request).store.get_twilio_call(id=request.path_params["id"])
        except StoreError as exc:
            log.warning("twilio.store_failed", error=str(exc)[:300])
            return _error(503, "the call store is unavailable; retry")
        if row is None or row.direction != "outbound":
            return _error(404, "no such outbound call")
        return JSONResponse(outbound_view(row, mask=mask))

    async def cancel_outbound(request: Request) -> Response:
        if (denied := await auth.authorize(request, write=True)) is not None:
            return denied
        calls_api = api(request)
        if twilio is None or calls_api is None:
            return _error(404, "Twilio is not configured")
        store: Store = runtime(request).store
        try:
            row = await store.get_twilio_call(id=request.path_params["id"])
        except StoreError as exc:
            log.warning("twilio.store_failed", error=str(exc)[:300])
            return _error(503, "the call store is unavailable; retry")
        if row is None or row.direction != "outbound":
            return _error(404, "no such outbound call")
        if row.final or row.call_id is not None or row.status == "in-progress":
            hint = " and reached the agent; hang it up instead" if row.call_id else ""
            return _error(409, f"the call cannot be canceled: it is {row.status}{hint}", call_status=row.status)
        if row.call_sid is None:
            return _error(409, "the call has no CallSid from Twilio yet; try again in a moment", call_status=row.status)
        try:
            # Status=canceled stops a queued or ringing call and leaves an answered one be (Twilio's rule)
            await calls_api.update(row.call_sid, Status="canceled")
        except TwilioError as exc:
            log.warning("twilio.cancel_failed", twilio_id=row.id, status=exc.status, code=exc.code)
            return _error(502, str(exc), twilio_code=exc.code)
        log.info("twilio.cancel", twilio_id=row.id, call_sid=row.call_sid)
        # the status callback that follows (CallStatus canceled) reports the call, like any call never answered
        return JSONResponse({**outbound_view(row, mask=mask), "cancel": "requested"}, status_code=202)

    return [
        Route(VOICE_PATH, voice, methods=["POST"]),
        Route(STATUS_PATH, status, methods=["POST"]),
        Route(RECORDING_PATH, recording, methods=["POST"]),
        Route(PARKED_PATH, parked, methods=["POST"]),
        Route("/v1/outbound", place, methods=["POST"]),
        Route("/v1/outbound/{id}", get_outbound, methods=["GET"]),
        Route("/v1/outbound/{id}/cancel", cancel_outbound, methods=["POST"]),
    ]
