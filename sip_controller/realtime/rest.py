"""OpenAI's Realtime calls REST API (accept, reject, refer, hangup), and the process's HTTP client.

Every HTTP request the controller makes (these four POSTs, operator HTTP tools, report deliveries) goes through an
httpx client made by :func:`new_http_client`: httpx's API over aiohttp's connection pool (the ``httpx-aiohttp``
transport). The same client serves production, respx-mocked tests (respx patches httpx, whatever the transport)
and proxies (httpx reads ``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY`` and mounts an aiohttp transport per proxy).

Stale keep-alive connections: aiohttp's pool learns of a peer's close from the event loop and never hands out a
connection it knows is closed, and idle connections are dropped after :data:`KEEPALIVE_EXPIRY_S`, below the idle
timeouts of the usual HTTP front ends, so the client closes before the server does. What is left, a close that
crosses the request on the wire, fails as a :class:`TransportError`: neither aiohttp nor httpx sends a POST again
on its own (RFC 9112 section 9.3.1), and the retry policies in :mod:`sip_controller.realtime.retries` retry it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import httpx
from httpx_aiohttp import HttpxAiohttpClient

DEFAULT_TIMEOUT = httpx.Timeout(connect=3.0, read=5.0, write=5.0, pool=3.0)
#: Requests to OpenAI let into the client's pool at once; more wait here, in FIFO order, at most
#: ``DEFAULT_TIMEOUT.pool`` seconds (a burst of rejects at capacity queues here, not inside the pool).
MAX_IN_FLIGHT = 100
#: Connections of one client, all hosts together (aiohttp's connector limit).
MAX_CONNECTIONS = 100
#: How long an idle keep-alive connection is kept for reuse (aiohttp's own default, stated here).
KEEPALIVE_EXPIRY_S = 15.0

#: What a request through :func:`new_http_client` raises when no usable answer came: httpx's errors, and aiohttp's
#: ``ClientResponseError`` for an answer that is not HTTP (httpx-aiohttp 0.2 passes that one through unmapped).
HTTP_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, aiohttp.ClientError)


class _Client(HttpxAiohttpClient):
    """httpx over aiohttp's pool, without the reference cycle httpx 0.28 leaves behind each response."""

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        response = await super().send(request, stream=stream, auth=auth, follow_redirects=follow_redirects)
        if not stream:
            # Read and closed. httpx wraps the body stream in one that points back at the response (to stamp
            # ``elapsed`` on close): a cycle, so about 40 objects per request waited for the cyclic collector, whose
            # young-generation passes then freed tens of thousands at once (20-60 ms pauses in the bench). Dropping
            # the spent stream lets reference counting free the response (encode/httpx#3733).
            response.stream = _SPENT
        return response


_SPENT = httpx.ByteStream(b"")


def new_http_client(
    *,
    max_connections: int = MAX_CONNECTIONS,
    keepalive_expiry: float = KEEPALIVE_EXPIRY_S,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
) -> httpx.AsyncClient:
    """An httpx client over aiohttp's pool; TLS verified against httpx's CA bundle (``SSL_CERT_FILE`` honoured),
    proxies from the environment. The caller owns it: ``await client.aclose()`` (or ``async with``)."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=keepalive_expiry
    )
    return _Client(limits=limits, timeout=timeout)


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


def _no_answer(exc: Exception) -> str:
    """Why no HTTP answer came, in words that hold for either transport. httpx-aiohttp maps several of aiohttp's
    connection errors (a refused connect, a server that hung up) to ``httpx.ConnectTimeout``; only a real timeout
    is reported as one."""
    cause = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else None
    if isinstance(exc, httpx.TimeoutException) and (cause is None or isinstance(cause, TimeoutError)):
        return f"timed out ({type(exc).__name__})"
    failure = cause if cause is not None else exc
    return f"{type(failure).__name__}: {failure}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_for(operation: str, response: httpx.Response) -> OpenAIError:
    message, code, param = response.reason_phrase or "error", None, None
    try:
        payload = json.loads(response.content) if response.content else None
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        err = payload["error"]
        message = str(err.get("message") or message)
        code = err.get("code") if isinstance(err.get("code"), str) else None
        param = err.get("param") if isinstance(err.get("param"), str) else None
    status = response.status_code
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
    """Typed wrapper of ``/realtime/calls/{call_id}/…``. The clients are owned by whoever made them."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        rest_client: httpx.AsyncClient | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        observer: Callable[[str, int, float], None] | None = None,
    ) -> None:
        """``client`` serves operator HTTP tools (:attr:`http_client`); ``rest_client`` carries the REST calls
        (default: ``client``; the service gives them a pool of their own, so a slow tool never holds the
        connections an accept needs). ``observer(operation, status, seconds)`` sees every request (status 0: no
        HTTP answer)."""
        self._observer = observer
        self._client = client
        self._rest = rest_client or client
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
        """The client for operator HTTP tools."""
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
            # JSON's content type on the bodiless hangup too, as OpenAI's SDK sends it (aiohttp would otherwise add
            # application/octet-stream to an empty POST)
            response = await self._rest.post(url, content=content, headers=self._json_headers, timeout=DEFAULT_TIMEOUT)
            status = response.status_code
        except HTTP_ERRORS as exc:
            raise TransportError(operation, 0, _no_answer(exc)) from exc
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
