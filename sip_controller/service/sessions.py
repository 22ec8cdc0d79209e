"""Sign-in for the live-calls page: sessions, throttling of token guesses, and where a write came from.

A session is an opaque random id in the browser's cookie; the server keeps only its SHA-256 (with the session's
CSRF token and expiry) in a :class:`SessionStore`, so sign-out revokes it and a copy of the table holds no usable
cookie. :class:`StoreSessions` keeps them in the shared store (``state/console_sessions.py``): every replica
accepts a session another one started and a sign-out on one revokes it everywhere (#13). The service always uses
it; :class:`MemorySessionStore`, a bounded table in this process, serves an :class:`AdminAuth
<sip_controller.service.admin.AdminAuth>` built without a store (unit tests).

A :class:`Throttle` counts wrong tokens per client (console sign-in and the API's bearer token alike): after a
few, the client waits (1 s, doubling per further wrong token, capped: :class:`LoginBackoff`) and is answered 429
without its token being looked at. :class:`StoreThrottle` counts them in the shared store, so the wait holds
whichever replica a guess reaches; :class:`LoginThrottle` is the bounded in-memory one.
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

from sip_controller.state.console_sessions import TOUCH_AFTER_S, ConsoleSession, LoginBackoff
from sip_controller.state.store import Store

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
    """Where sessions live, by key (the SHA-256 of the cookie's id, never the id)."""

    async def create(self, key: str, csrf: str, ttl_s: float) -> Session:
        """Keep a new session, live for ``ttl_s`` from now (the oldest may end to make room)."""
        ...

    async def find(self, key: str) -> Session | None:
        """The session if it is live (neither expired nor revoked), else None."""
        ...

    async def revoke(self, key: str) -> None:
        """End the session now (sign-out)."""
        ...


class MemorySessionStore:
    """At most ``max_sessions`` in this process: expired ones go first, then the oldest. For an AdminAuth without a
    store (unit tests); the service keeps its sessions in the store (:class:`StoreSessions`)."""

    def __init__(self, max_sessions: int, *, clock: Callable[[], float] = time.time) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._sessions)

    async def create(self, key: str, csrf: str, ttl_s: float) -> Session:
        now = self._clock()
        if len(self._sessions) >= self.max_sessions:
            for old in [k for k, s in self._sessions.items() if s.expires_at <= now]:
                del self._sessions[old]
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
            log.warning("console.session_evicted", max_sessions=self.max_sessions)
        session = self._sessions[key] = Session(key, csrf, now + ttl_s)
        return session

    async def find(self, key: str) -> Session | None:
        session = self._sessions.get(key)
        if session is not None and session.expires_at <= self._clock():
            del self._sessions[key]  # an expired session found is dropped
            return None
        return session

    async def revoke(self, key: str) -> None:
        self._sessions.pop(key, None)


class StoreSessions:
    """Sessions in the shared store (:meth:`~sip_controller.state.store.Store.create_console_session` and its
    siblings): any replica finds them, a revocation holds everywhere. A lookup is one primary-key read; the
    session's ``last_seen_at`` is written at most every ``touch_after_s``. At most ``max_sessions`` live at once
    across the cluster: a sign-in beyond that ends the oldest."""

    def __init__(self, store: Store, *, max_sessions: int | None = None, touch_after_s: float = TOUCH_AFTER_S) -> None:
        self.store = store
        self.max_sessions = max_sessions
        self.touch_after_s = touch_after_s

    async def create(self, key: str, csrf: str, ttl_s: float) -> Session:
        row, revoked = await self.store.create_console_session(key, csrf, ttl_s=ttl_s, max_sessions=self.max_sessions)
        if revoked:
            log.warning("console.session_evicted", max_sessions=self.max_sessions, ended=revoked)
        return _session(row)

    async def find(self, key: str) -> Session | None:
        row = await self.store.find_console_session(key, touch_after_s=self.touch_after_s)
        return None if row is None else _session(row)

    async def revoke(self, key: str) -> None:
        await self.store.revoke_console_session(key)


def _session(row: ConsoleSession) -> Session:
    return Session(row.key, row.csrf, row.expires_at)


class Sessions:
    """Creates, finds and revokes sessions by the id in the cookie."""

    def __init__(self, store: SessionStore, *, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s

    async def create(self) -> tuple[str, Session]:
        """A new session; returns the id for the cookie (not kept anywhere else) and the session."""
        session_id = secrets.token_urlsafe(ID_BYTES)
        session = await self.store.create(session_key(session_id), secrets.token_urlsafe(ID_BYTES), self.ttl_s)
        return session_id, session

    async def find(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        return await self.store.find(session_key(session_id))

    async def alive(self, session: Session) -> bool:
        """Whether ``session`` is still valid (not revoked, not expired)."""
        return await self.store.find(session.key) is not None

    async def revoke(self, session_id: str) -> None:
        await self.store.revoke(session_key(session_id))


class Throttle(Protocol):
    """Wrong tokens per client key (:func:`client_key`)."""

    async def retry_after(self, client: str) -> float:
        """Seconds ``client`` must still wait before a token of theirs is checked again (0: go ahead)."""
        ...

    async def failed(self, client: str) -> float:
        """Record a wrong token from ``client``; returns the wait it now has (0 while under the free count)."""
        ...


class StoreThrottle:
    """Wrong tokens counted in the shared store (:meth:`~sip_controller.state.store.Store.login_failed`): a guesser
    spreading its guesses over the replicas waits as long as one that keeps to one. :meth:`retry_after` is one
    primary-key read (on every bearer request and sign-in); only a wrong token writes."""

    def __init__(self, store: Store, backoff: LoginBackoff) -> None:
        self.store = store
        self.backoff = backoff

    async def retry_after(self, client: str) -> float:
        return await self.store.login_wait(client)

    async def failed(self, client: str) -> float:
        failures, wait = await self.store.login_failed(client, self.backoff)
        if failures == self.backoff.free_failures + 1:
            log.warning("console.login_throttled", client=client, failures=failures)
        return wait


@dataclass(slots=True)
class _Failures:
    count: int
    last: float
    blocked_until: float


class LoginThrottle:
    """Wrong tokens per client in this process, with exponential backoff (:class:`LoginBackoff`); at most
    ``max_clients`` remembered (the oldest failure is forgotten first). A client's record is dropped after
    ``forget_after_s`` without a wrong token. For an AdminAuth without a store (unit tests)."""

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
        self.backoff = LoginBackoff(free_failures, first_wait_s, max_wait_s, forget_after_s)
        self.forget_after_s = self.backoff.forget_s
        self.max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, _Failures] = OrderedDict()  # least recent failure first

    def __len__(self) -> int:
        return len(self._clients)

    async def retry_after(self, client: str) -> float:
        now = self._clock()
        self._forget(now)
        record = self._clients.get(client)
        return 0.0 if record is None else max(0.0, record.blocked_until - now)

    async def failed(self, client: str) -> float:
        now = self._clock()
        self._forget(now)
        record = self._clients.pop(client, None) or _Failures(0, now, now)
        record.count += 1
        record.last = now
        wait = self.backoff.wait(record.count)
        if wait > 0:
            record.blocked_until = now + wait
            if record.count == self.backoff.free_failures + 1:
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
