"""OpenAI's Realtime calls REST API (accept, reject, refer, hangup).

Requests go through a :class:`Transport`: the lean keep-alive
:class:`~sip_controller.realtime.http11.Http11Pool` in production
(see :func:`lean_transport_fits`), or an httpx client (behind a proxy, and in tests that mock OpenAI with respx).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from sip_controller.realtime.http11 import HttpFailure, Reply

DEFAULT_TIMEOUT = httpx.Timeout(connect=3.0, read=5.0, write=5.0, pool=3.0)
#: Requests let into the httpx pool at once (its default connection limit). More wait here, in FIFO order:
#: httpcore rescans every queued request against every connection on each pool event, so a queue of a few
#: hundred (a burst of rejects at capacity) made each request cost milliseconds of CPU.
MAX_IN_FLIGHT = 100


class OpenAIError(Exception):
    """A failed call to OpenAI. ``status`` is the HTTP status (0 when no response arrived)."""

    def __init__(
        self,
        operation: str,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        self.operation = operation
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        where = f" (param {param})" if param else ""
        super().__init__(f"{operation}: HTTP {status} {code or ''} {message}{where}".replace("  ", " "))


class CallGone(OpenAIError):
    """404 ``call_id_not_found``: the call ended, expired or never existed."""


class RateLimited(OpenAIError):
    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class ServerError(OpenAIError):
    """5xx from OpenAI."""


class InvalidRequest(OpenAIError):
    """400/422: the body was refused; ``message`` and ``param`` say why."""


class AuthError(OpenAIError):
    """401/403: the API key is wrong or lacks access."""


class TransportError(OpenAIError):
    """No HTTP answer: connection refused, DNS, TLS, or a timeout."""


def sideband_url(base_url: str, call_id: str) -> str:
    """``https://host/v1`` -> ``wss://host/v1/realtime?call_id=…`` (``http`` -> ``ws``)."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"OPENAI_BASE_URL must be http(s), got {base_url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path + "/realtime", f"call_id={quote(call_id)}", ""))


class Transport(Protocol):
    """POSTs a JSON body to an absolute URL; raises :class:`~sip_controller.realtime.http11.HttpFailure` when no
    answer came."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Reply: ...


class HttpxTransport:
    """A :class:`Transport` over an httpx client (proxies, and respx in tests)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        try:
            r = await self._client.post(url, content=body, headers=headers, timeout=DEFAULT_TIMEOUT)
        except httpx.TimeoutException as exc:
            raise HttpFailure(f"timed out ({type(exc).__name__})", timeout=True) from exc
        except httpx.HTTPError as exc:
            raise HttpFailure(f"{type(exc).__name__}: {exc}") from exc
        return Reply(r.status_code, r.reason_phrase, dict(r.headers), r.content)


def lean_transport_fits(base_url: str) -> bool:
    """True unless the environment routes ``base_url`` through a proxy (``HTTPS_PROXY`` and friends), which
    only the httpx transport honours."""
    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return True
    return bool(parts.hostname and urllib.request.proxy_bypass(parts.hostname))


def _retry_after(response: Reply) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_for(operation: str, response: Reply) -> OpenAIError:
    message, code, param = response.reason or "error", None, None
    try:
        payload = json.loads(response.body) if response.body else None
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        err = payload["error"]
        message = str(err.get("message") or message)
        code = err.get("code") if isinstance(err.get("code"), str) else None
        param = err.get("param") if isinstance(err.get("param"), str) else None
    status = response.status
    if status == 404:
        return CallGone(operation, status, message, code=code or "call_id_not_found", param=param)
    if status == 429:
        return RateLimited(operation, status, message, code=code, param=param, retry_after=_retry_after(response))
    if status >= 500:
        return ServerError(operation, status, message, code=code, param=param)
    if status in (401, 403):
        return AuthError(operation, status, message, code=code, param=param)
    return InvalidRequest(operation, status, message, code=code, param=param)


class RealtimeCalls:
    """Typed wrapper of ``/realtime/calls/{call_id}/…``. The client is owned by whoever made it."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        transport: Transport | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        observer: Callable[[str, int, float], None] | None = None,
    ) -> None:
        """``transport`` carries the REST calls (default: ``client``); ``client`` also serves operator HTTP tools.
        ``observer(operation, status, seconds)`` sees every request (status 0: no HTTP answer)."""
        self._observer = observer
        self._client = client
        self._transport = transport or HttpxTransport(client)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._json_headers = {**self._headers, "Content-Type": "application/json"}

    @property
    def base_url(self) -> str:
        return self._base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self._base_url = value.rstrip("/")
        self._sideband_prefix = sideband_url(self._base_url, "")  # ends with "call_id="

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The shared client (operator HTTP tools reuse its connection pool)."""
        return self._client

    @property
    def sideband_headers(self) -> dict[str, str]:
        return dict(self._headers)

    def sideband_url(self, call_id: str) -> str:
        return self._sideband_prefix + quote(call_id)

    async def _post(self, operation: str, call_id: str, body: dict[str, Any] | None) -> None:
        url = f"{self.base_url}/realtime/calls/{quote(call_id, safe='')}/{operation}"
        if self._in_flight.locked():  # a queue: wait for a slot, bounded (a free slot costs no timer)
            try:
                async with asyncio.timeout(DEFAULT_TIMEOUT.pool):
                    await self._in_flight.acquire()
            except TimeoutError:
                raise TransportError(operation, 0, "timed out (PoolTimeout)") from None
        else:
            await self._in_flight.acquire()  # returns at once
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        started = time.monotonic()
        status = 0
        try:
            response = await self._transport.post(url, content, self._json_headers if content else self._headers)
            status = response.status
        except HttpFailure as exc:
            raise TransportError(operation, 0, str(exc)) from exc
        finally:
            self._in_flight.release()
            if self._observer is not None:
                self._observer(operation, status, time.monotonic() - started)
        if not response.is_success:
            raise _error_for(operation, response)

    async def accept(self, call_id: str, body: dict[str, Any]) -> None:
        await self._post("accept", call_id, body)

    async def reject(self, call_id: str, status_code: int = 603) -> None:
        await self._post("reject", call_id, {"status_code": status_code})

    async def refer(self, call_id: str, target_uri: str) -> None:
        await self._post("refer", call_id, {"target_uri": target_uri})

    async def hangup(self, call_id: str) -> None:
        await self._post("hangup", call_id, None)
