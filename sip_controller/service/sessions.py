"""Sign-in for the live-calls page: sessions, throttling of token guesses, and where a write came from.

A session is an opaque random id in the browser's cookie; the server keeps only its SHA-256 (with the session's
CSRF token and expiry) in a :class:`SessionStore`, so sign-out revokes it and a copy of the table holds no usable
cookie. :class:`MemorySessionStore` is a bounded table in this process; a durable store (several replicas, sessions
that outlive a restart) implements the same three methods.

:class:`LoginThrottle` counts wrong tokens per client (console sign-in and the API's bearer token alike): after a
few, the client waits (1 s, doubling per further wrong token, capped) and is answered 429 without its token being
looked at. Its table is bounded too.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import structlog
from starlette.requests import Request

log = structlog.get_logger("sip_controller.service.sessions")

#: random bytes in a session id and a CSRF token
ID_BYTES = 32


def session_key(session_id: str) -> str:
    """What the store keeps for a session id: its SHA-256 (the id itself only ever lives in the cookie)."""
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    key: str
    #: sent back with every cookie-authenticated write (a header, or the sign-out form's hidden field)
    csrf: str
    #: wall-clock seconds
    expires_at: float

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


class SessionStore(Protocol):
    """Where sessions live, by key. ``get`` may return an expired session; :class:`Sessions` checks expiry."""

    async def put(self, session: Session) -> None: ...

    async def get(self, key: str) -> Session | None: ...

    async def delete(self, key: str) -> None: ...


class MemorySessionStore:
    """At most ``max_sessions`` in this process: expired ones go first, then the oldest."""

    def __init__(self, max_sessions: int, *, clock: Callable[[], float] = time.time) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._sessions)

    async def put(self, session: Session) -> None:
        if len(self._sessions) >= self.max_sessions:
            now = self._clock()
            for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
                del self._sessions[key]
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
            log.warning("console.session_evicted", max_sessions=self.max_sessions)
        self._sessions[session.key] = session

    async def get(self, key: str) -> Session | None:
        return self._sessions.get(key)

    async def delete(self, key: str) -> None:
        self._sessions.pop(key, None)


class Sessions:
    """Creates, finds and revokes sessions by the id in the cookie."""

    def __init__(self, store: SessionStore, *, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._clock = clock

    async def create(self) -> tuple[str, Session]:
        """A new session; returns the id for the cookie (not kept anywhere else) and the session."""
        session_id = secrets.token_urlsafe(ID_BYTES)
        session = Session(session_key(session_id), secrets.token_urlsafe(ID_BYTES), self._clock() + self.ttl_s)
        await self.store.put(session)
        return session_id, session

    async def find(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        return await self._live(session_key(session_id))

    async def alive(self, session: Session) -> bool:
        """Whether ``session`` is still valid (not revoked, not expired)."""
        return await self._live(session.key) is not None

    async def revoke(self, session_id: str) -> None:
        await self.store.delete(session_key(session_id))

    async def _live(self, key: str) -> Session | None:
        session = await self.store.get(key)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            await self.store.delete(key)
            return None
        return session


@dataclass(slots=True)
class _Failures:
    count: int
    last: float
    blocked_until: float


class LoginThrottle:
    """Wrong tokens per client, with exponential backoff; at most ``max_clients`` remembered (the oldest failure
    is forgotten first). A client's record is dropped after ``forget_after_s`` without a wrong token."""

    def __init__(
        self,
        *,
        free_failures: int = 5,
        first_wait_s: float = 1.0,
        max_wait_s: float = 300.0,
        forget_after_s: float = 900.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.first_wait_s = first_wait_s
        self.max_wait_s = max_wait_s
        self.forget_after_s = max(forget_after_s, max_wait_s)
        self.max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, _Failures] = OrderedDict()  # least recent failure first

    def __len__(self) -> int:
        return len(self._clients)

    def retry_after(self, client: str) -> float:
        """Seconds ``client`` must still wait before a token of theirs is checked again (0: go ahead)."""
        now = self._clock()
        self._forget(now)
        record = self._clients.get(client)
        return 0.0 if record is None else max(0.0, record.blocked_until - now)

    def failed(self, client: str) -> float:
        """Record a wrong token from ``client``; returns the wait it now has (0 while under the free count)."""
        now = self._clock()
        self._forget(now)
        record = self._clients.pop(client, None) or _Failures(0, now, now)
        record.count += 1
        record.last = now
        over = record.count - self.free_failures
        if over > 0:
            wait = min(self.max_wait_s, self.first_wait_s * 2 ** min(over - 1, 32))
            record.blocked_until = now + wait
            if over == 1:
                log.warning("console.login_throttled", client=client, failures=record.count)
        self._clients[client] = record
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        return max(0.0, record.blocked_until - now)

    def _forget(self, now: float) -> None:
        while self._clients:
            client, record = next(iter(self._clients.items()))
            if now - record.last <= self.forget_after_s:
                return
            del self._clients[client]


def retry_after_header(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))


def client_key(request: Request) -> str:
    """Who is guessing: the client's address as uvicorn reports it (a trusted proxy's X-Forwarded-For is
    applied by uvicorn, ``FORWARDED_ALLOW_IPS``); an IPv6 client by its /64, since one host owns a whole one."""
    host = request.client.host if request.client is not None else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def on_loopback(request: Request) -> bool:
    """Whether the connection reached us on a loopback address (the local end of the socket, which no header
    can change)."""
    server = request.scope.get("server")
    if not server or not isinstance(server[0], str):
        return False
    try:
        return ipaddress.ip_address(server[0]).is_loopback
    except ValueError:
        return server[0] == "localhost"


def _netloc(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return host if port in (None, default) else f"{host}:{port}"


def _hosts(request: Request) -> set[str]:
    """The names this request was sent to: Host, and X-Forwarded-Host from a proxy that rewrites Host. Neither
    can be set by another site's page (a cross-site request cannot add headers without our CORS consent)."""
    names = set()
    for header in ("host", "x-forwarded-host"):
        for value in request.headers.getlist(header):
            for name in value.split(","):
                name = name.strip().lower()
                if name:
                    names.add(name)
                    for suffix in (":80", ":443"):
                        names.add(name.removesuffix(suffix))
    return names


def same_origin(request: Request) -> bool:
    """Whether a browser sent this request from one of our own pages. ``Sec-Fetch-Site`` (every current
    browser) decides when present; otherwise ``Origin``, then ``Referer``, must name the host the request was
    sent to. A request with none of them is not from a browser page (CSRF needs a browser) and passes."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True
    netloc = _netloc(source)  # None for "null" (a sandboxed or privacy-stripped origin): never ours
    return netloc is not None and netloc in _hosts(request)
