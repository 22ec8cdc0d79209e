"""Twilio's Calls API (``POST /2010-04-01/Accounts/{AccountSid}/Calls.json``) through the controller's httpx client.

Placing a call is not idempotent on Twilio's side: a request that may have reached Twilio (a read timeout, a reset
connection, a 5xx) is never sent again, or a person could be called twice. Retried, with the controller's retry
policy (:mod:`sip_controller.realtime.retries`), are only what certainly did not place a call: a 429 (honouring
``Retry-After``) and a connection that could not be opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx

from sip_controller.realtime.rest import HTTP_ERRORS
from sip_controller.realtime.retries import DEFAULT_POLICY, RetryPolicy, retrying

API_VERSION = "2010-04-01"
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")


class TwilioError(Exception):
    """A Calls API request that failed: ``status`` (HTTP, 0 without an answer), Twilio's ``code`` (e.g. 21211, an
    invalid To number) and message. ``ambiguous``: the call may have been placed all the same."""

    def __init__(self, status: int, message: str, *, code: int | None = None, ambiguous: bool = False,
                 retry_after: float | None = None) -> None:  # fmt: skip
        self.status = status
        self.code = code
        self.message = message
        self.ambiguous = ambiguous
        self.retry_after = retry_after
        where = f"HTTP {status}" if status else "no answer"
        super().__init__(f"Twilio Calls API: {where}" + (f" (code {code})" if code else "") + f": {message}")


@dataclass(frozen=True)
class CallRequest:
    """One call to place. ``twiml`` (what to do once answered) or ``url`` (where Twilio asks for it)."""

    to: str
    from_: str
    status_callback: str
    twiml: str | None = None
    url: str | None = None
    timeout_s: int | None = None
    #: ``Enable`` or ``DetectMessageEnd`` (None: no answering machine detection)
    machine_detection: str | None = None
    #: with machine detection: the verdict is POSTed here as soon as known while the call goes on (AsyncAmd);
    #: None: Twilio waits for the verdict before it runs the TwiML
    async_amd_callback: str | None = None
    status_events: Sequence[str] = field(default=STATUS_EVENTS)
    #: record the call from the answer, each side on its own channel, and POST the recording's callback here
    #: (None: not recorded)
    recording_callback: str | None = None

    def form(self) -> list[tuple[str, str]]:
        """The form fields in Twilio's names (``StatusCallbackEvent`` repeated once per event)."""
        if (self.twiml is None) == (self.url is None):
            raise ValueError("a call needs exactly one of twiml and url")
        pairs = [("To", self.to), ("From", self.from_)]
        pairs.append(("Twiml", self.twiml) if self.twiml is not None else ("Url", str(self.url)))
        pairs += [("StatusCallback", self.status_callback), ("StatusCallbackMethod", "POST")]
        pairs += [("StatusCallbackEvent", event) for event in self.status_events]
        if self.timeout_s is not None:
            pairs.append(("Timeout", str(self.timeout_s)))
        if self.machine_detection is not None:
            pairs.append(("MachineDetection", self.machine_detection))
            if self.async_amd_callback is not None:
                pairs += [("AsyncAmd", "true"), ("AsyncAmdStatusCallback", self.async_amd_callback),
                          ("AsyncAmdStatusCallbackMethod", "POST")]  # fmt: skip
        if self.recording_callback is not None:
            pairs += [("Record", "true"), ("RecordingChannels", "dual"),
                      ("RecordingStatusCallback", self.recording_callback),
                      ("RecordingStatusCallbackMethod", "POST"),
                      ("RecordingStatusCallbackEvent", "completed absent")]  # fmt: skip
        return pairs


@dataclass(frozen=True)
class PlacedCall:
    sid: str
    status: str


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _error(response: httpx.Response) -> TwilioError:
    code: int | None = None
    message = response.reason_phrase or "error"
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        raw_code = body.get("code")
        code = raw_code if isinstance(raw_code, int) else None
        message = str(body.get("message") or message)[:300]
    return TwilioError(
        response.status_code,
        message,
        code=code,
        ambiguous=response.status_code >= 500,
        retry_after=_retry_after(response) if response.status_code == 429 else None,
    )


class TwilioCalls:
    """The Calls API of one account. ``client`` is the controller's httpx client (owned by the caller)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        account_sid: str,
        auth: tuple[str, str],
        policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self._client = client
        self._base = f"{base_url.rstrip('/')}/{API_VERSION}/Accounts/{account_sid}"
        self._auth = httpx.BasicAuth(*auth)
        self._policy = policy

    async def _send(self, method: str, path: str, form: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        content = None if form is None else urlencode(form).encode()
        headers = None if form is None else {"content-type": "application/x-www-form-urlencoded"}
        try:
            response = await self._client.request(
                method, self._base + path, content=content, headers=headers, auth=self._auth
            )
        except httpx.ConnectError as exc:
            raise TwilioError(0, f"cannot connect ({type(exc).__name__})") from exc
        except HTTP_ERRORS as exc:
            raise TwilioError(0, f"no answer ({type(exc).__name__})", ambiguous=True) from exc
        if response.status_code >= 300:
            raise _error(response)
        try:
            body = response.json()
        except ValueError:
            raise TwilioError(response.status_code, "the answer is not JSON", ambiguous=True) from None
        if not isinstance(body, dict):
            raise TwilioError(response.status_code, "the answer is not a JSON object", ambiguous=True)
        return body

    async def _retrying(self, method: str, path: str, form: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        def on(exc: Exception) -> bool | float:
            if not isinstance(exc, TwilioError) or exc.ambiguous:
                return False
            if exc.status == 429:
                return exc.retry_after if exc.retry_after is not None else True
            return exc.status == 0  # could not connect: nothing was sent

        return await retrying(
            lambda: self._send(method, path, form), on, self._policy,
            attempts=self._policy.attempts, timeout_s=self._policy.timeout_s,
        )  # fmt: skip

    async def create(self, request: CallRequest) -> PlacedCall:
        """Place the call; Twilio answers with the new call's SID (``CA…``) and status (``queued``)."""
        body = await self._retrying("POST", "/Calls.json", request.form())
        sid, status = body.get("sid"), body.get("status")
        if not isinstance(sid, str) or not sid.startswith("CA"):
            raise TwilioError(200, "the answer has no call sid", ambiguous=True)
        return PlacedCall(sid, str(status or "queued"))

    async def fetch(self, call_sid: str) -> dict[str, Any]:
        """The call as Twilio has it now (``status``, ``answered_by``, ``duration``, …)."""
        return await self._retrying("GET", f"/Calls/{call_sid}.json")

    async def update(self, call_sid: str, **fields: str) -> dict[str, Any]:
        """Change a live call: ``Status="completed"`` hangs it up, ``Status="canceled"`` stops it ringing,
        ``Twiml=…`` redirects it."""
        return await self._retrying("POST", f"/Calls/{call_sid}.json", list(fields.items()))

