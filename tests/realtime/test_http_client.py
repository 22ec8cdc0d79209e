"""The controller's HTTP client (:func:`new_http_client`: httpx over aiohttp's pool) against real loopback servers,
under asyncio's loop and uvloop: keep-alive reuse, servers that close idle connections, timeouts, broken answers,
OpenAI's errors through :class:`RealtimeCalls`, proxies, and respx mocking the very same client."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import respx
import uvicorn
from starlette.types import Receive, Scope, Send

from sip_controller.realtime import rest
from sip_controller.realtime.rest import (
    CallGone,
    RateLimited,
    RealtimeCalls,
    TransportError,
    new_http_client,
)
from sip_controller.realtime.retries import RetryPolicy, with_quick_retries
from tests.loops import both_loops

anyio_backend = both_loops

Answer = Callable[[bytes, int], bytes | None]  # (request head + body, request number on this connection) -> bytes
KEY = "sk-test"
QUICK = RetryPolicy(wait_initial=0.01, wait_max=0.02, wait_jitter=0.0, attempts=3, timeout_s=2.0)


def ok(body: bytes = b"", status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@dataclass
class Server:
    """A scripted HTTP/1.1 server: ``answer`` writes each reply (``None``: close without answering);
    ``idle_close_s`` closes a connection that waited that long for its next request (a keep-alive timeout)."""

    answer: Answer
    idle_close_s: float | None = None
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        n = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_close_s):
                        head = await reader.readuntil(b"\r\n\r\n")
                except TimeoutError:
                    writer.close()  # the keep-alive timeout: close the idle connection
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = self.answer(request, n)
                n += 1
                if reply is None:
                    writer.close()
                    return
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@contextlib.asynccontextmanager
async def serving(answer: Answer, *, idle_close_s: float | None = None) -> AsyncIterator[Server]:
    server = Server(answer, idle_close_s)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        for w in server.writers:
            w.close()
        listener.close()
        await listener.wait_closed()


@contextlib.asynccontextmanager
async def calls_to(server: Server, **client_kwargs: float) -> AsyncIterator[RealtimeCalls]:
    async with new_http_client(**client_kwargs) as client:  # type: ignore[arg-type]
        yield RealtimeCalls(client, base_url=server.url, api_key=KEY)


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rest, "DEFAULT_TIMEOUT", httpx.Timeout(connect=0.5, read=0.3, write=0.5, pool=0.5))


def error_body(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code}}).encode()


# ---- keep-alive ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_posts_go_on_one_kept_alive_connection() -> None:
    async with serving(lambda req, n: ok()) as server, calls_to(server) as api:
        await api.accept("rtc_1", {"type": "realtime"})
        await api.reject("rtc_2", 486)
        await api.hangup("rtc_1")
    assert server.connections == 1
    accept, reject, hangup = (r.decode() for r in server.requests)
    assert accept.startswith("POST /v1/realtime/calls/rtc_1/accept HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}\r\n" in accept.lower()
    assert "authorization: bearer sk-test\r\n" in accept.lower()
    assert "content-type: application/json\r\n" in accept.lower()
    assert accept.endswith('\r\n\r\n{"type":"realtime"}')
    assert reject.endswith('{"status_code":486}')
    assert "content-length: 0\r\n" in hangup.lower()
    assert hangup.lower().count("content-type") == 1  # JSON's, as OpenAI's SDK sends it; no octet-stream added


@pytest.mark.anyio
async def test_concurrent_requests_open_connections_and_reuse_them() -> None:
    async with serving(lambda req, n: ok()) as server, calls_to(server) as api:
        await asyncio.gather(*(api.hangup(f"rtc_{i}") for i in range(10)))
        opened = server.connections
        await asyncio.gather(*(api.hangup(f"rtc_{i}") for i in range(10)))
        assert server.connections == opened  # the idle ones were kept and reused
    assert 1 <= opened <= 10


@pytest.mark.anyio
async def test_the_pool_limit_bounds_the_connections() -> None:
    async with serving(lambda req, n: ok()) as server, calls_to(server, max_connections=2) as api:
        await asyncio.gather(*(api.hangup(f"rtc_{i}") for i in range(8)))  # eight at once: six wait for a connection
    assert server.connections == 2
    assert len(server.requests) == 8


@pytest.mark.anyio
async def test_connection_close_answers_are_not_reused() -> None:
    async with serving(lambda req, n: ok(extra="Connection: close\r\n")) as server, calls_to(server) as api:
        for _ in range(2):
            await api.hangup("rtc_1")
    assert server.connections == 2


# ---- stale keep-alive connections --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    # the server's keep-alive timeout (0.1 s) is shorter than the client's: the pool learns of the close from the
    # event loop and opens a new connection instead of writing into the closed one
    async with serving(lambda req, n: ok(), idle_close_s=0.1) as server, calls_to(server) as api:
        await api.hangup("rtc_1")
        await asyncio.sleep(0.3)
        await api.hangup("rtc_2")
        await asyncio.sleep(0.3)
        await api.accept("rtc_3", {"type": "realtime"})
    assert server.connections == 3
    assert len(server.requests) == 3  # nothing was sent twice, nothing was lost


@pytest.mark.anyio
async def test_idle_connections_past_the_client_expiry_are_closed_by_the_client() -> None:
    async with serving(lambda req, n: ok()) as server, calls_to(server, keepalive_expiry=0.05) as api:
        await api.hangup("rtc_1")
        await asyncio.sleep(0.2)
        await api.hangup("rtc_2")
    assert server.connections == 2


@pytest.mark.anyio
async def test_a_close_that_crosses_the_request_fails_once_and_the_retry_policy_sends_it_again() -> None:
    # the race a keep-alive timeout cannot rule out: the server drops the kept-alive connection just as the next
    # request arrives. Neither aiohttp nor httpx sends a POST again by itself (RFC 9112 section 9.3.1): the request
    # fails as a TransportError, and the retry policy the controller uses for every call sends it on a new one.
    async with serving(lambda req, n: ok() if n == 0 else None) as server, calls_to(server) as api:
        await api.hangup("rtc_1")
        await with_quick_retries(lambda: api.hangup("rtc_2"), QUICK)  # dropped, then sent on a new connection
        with pytest.raises(TransportError) as info:
            await api.hangup("rtc_3")  # the same race, without the retry policy: one failure, no resend
    assert "timed out" not in info.value.message  # a hang-up by the server is not reported as a timeout
    paths = [r.split(b" ")[1].decode().split("/")[-2] for r in server.requests]
    assert paths == ["rtc_1", "rtc_2", "rtc_2", "rtc_3"]
    assert server.connections == 2


@pytest.mark.anyio
async def test_uvicorn_closing_idle_connections_costs_no_request() -> None:
    """The same against a real server: uvicorn with a 1 s keep-alive timeout (what the simulator runs)."""
    peers: list[tuple[str, int]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        peers.append(scope["client"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, timeout_keep_alive=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with new_http_client() as client:
            api = RealtimeCalls(client, base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
            await api.hangup("rtc_1")
            await api.hangup("rtc_2")
            await asyncio.sleep(1.3)  # past uvicorn's keep-alive timeout: it closed the connection
            await api.hangup("rtc_3")
    finally:
        server.should_exit = True
        await task
        sock.close()
    assert len(peers) == 3
    assert peers[0] == peers[1] != peers[2]  # reused, then a new connection after the server's close


# ---- failures ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("short_timeouts")
async def test_a_silent_server_times_out() -> None:
    async with serving(lambda req, n: b"") as server, calls_to(server) as api:
        with pytest.raises(TransportError, match=r"timed out \(ReadTimeout\)") as info:
            await api.accept("rtc_1", {"type": "realtime"})
    assert info.value.status == 0
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


@pytest.mark.anyio
@pytest.mark.usefixtures("short_timeouts")
async def test_a_refused_connection_fails_fast() -> None:
    async with serving(lambda req, n: ok()) as server:
        url = server.url
    async with new_http_client() as client:
        api = RealtimeCalls(client, base_url=url, api_key=KEY)
        with pytest.raises(TransportError) as info:
            await api.hangup("rtc_1")
    assert "timed out" not in info.value.message
    assert "connect" in info.value.message.lower()


@pytest.mark.anyio
async def test_a_truncated_answer_fails() -> None:
    async with serving(lambda req, n: None) as server, calls_to(server) as api:  # a close on a new connection
        with pytest.raises(TransportError):
            await api.hangup("rtc_1")
    truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    async with serving(lambda req, n: truncated) as server, calls_to(server) as api:
        task = asyncio.create_task(api.hangup("rtc_1"))
        while not server.requests:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        server.writers[0].close()
        with pytest.raises(TransportError):
            await task


@pytest.mark.anyio
async def test_garbage_is_a_transport_error() -> None:
    async with serving(lambda req, n: b"SMTP ready\r\n\r\n") as server, calls_to(server) as api:
        with pytest.raises(TransportError):
            await api.hangup("rtc_1")


# ---- OpenAI's answers through the real client ------------------------------------------------------------------


@pytest.mark.anyio
async def test_errors_are_typed_and_observed() -> None:
    gone = error_body("Call not found", "call_id_not_found")
    chunked = (
        b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\nRetry-After: 2\r\n"
        b"Content-Type: application/json\r\n\r\n"
    )
    slow = error_body("slow down", "rate_limit_exceeded")
    chunked += b"%x\r\n%s\r\n0\r\n\r\n" % (len(slow), slow)

    def answer(req: bytes, n: int) -> bytes:
        return ok(gone, "404 Not Found") if b"/hangup" in req else chunked

    seen: list[tuple[str, int]] = []
    async with serving(answer) as server, new_http_client() as client:
        api = RealtimeCalls(client, base_url=server.url, api_key=KEY, observer=lambda op, st, s: seen.append((op, st)))
        with pytest.raises(CallGone) as not_found:
            await api.hangup("rtc_1")
        with pytest.raises(RateLimited) as limited:
            await api.refer("rtc_1", "tel:+14155550199")
    assert (not_found.value.code, not_found.value.message) == ("call_id_not_found", "Call not found")
    assert (limited.value.retry_after, limited.value.code) == (2.0, "rate_limit_exceeded")
    assert seen == [("hangup", 404), ("refer", 429)]
    assert server.connections == 1  # error answers keep the connection


@pytest.mark.anyio
async def test_a_response_is_freed_without_the_cyclic_collector() -> None:
    # httpx 0.28 leaves a response <-> stream cycle per request; new_http_client drops it once the body is read,
    # so the ring path leaves nothing for the collector (whose passes over such garbage paused the loop for 20-60 ms)
    async with serving(lambda req, n: ok(b"{}")) as server, new_http_client() as client:
        await client.post(server.url + "/warm-up", content=b"{}")
        gc.disable()
        try:
            response = await client.post(server.url + "/x", content=b"{}")
            assert response.json() == {}
            assert response.elapsed.total_seconds() > 0
            freed = weakref.ref(response)
            del response
            assert freed() is None
        finally:
            gc.enable()


# ---- proxies and respx ---------------------------------------------------------------------------------------


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.anyio
async def test_a_proxy_from_the_environment_carries_the_requests(no_proxy_env: pytest.MonkeyPatch) -> None:
    # a forward proxy sees absolute-form request targets; the origin's name is never resolved by us
    async with serving(lambda req, n: ok(b"{}", extra="Content-Type: application/json\r\n")) as proxy:
        no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        async with new_http_client() as client:
            api = RealtimeCalls(client, base_url="http://api.openai.invalid/v1", api_key=KEY)
            await api.hangup("rtc_1")
            await api.hangup("rtc_2")
        no_proxy_env.setenv("NO_PROXY", "api.openai.invalid")
        async with new_http_client() as client:
            api = RealtimeCalls(client, base_url="http://api.openai.invalid/v1", api_key=KEY)
            with pytest.raises(TransportError):  # exempt from the proxy: straight to a name that does not resolve
                await api.hangup("rtc_3")
    assert [r.split(b"\r\n")[0] for r in proxy.requests] == [
        b"POST http://api.openai.invalid/v1/realtime/calls/rtc_1/hangup HTTP/1.1",
        b"POST http://api.openai.invalid/v1/realtime/calls/rtc_2/hangup HTTP/1.1",
    ]
    assert proxy.connections == 1


@pytest.mark.anyio
async def test_respx_mocks_the_production_client() -> None:
    with respx.mock(using="httpx", assert_all_mocked=True) as router:
        route = router.post("https://api.openai.com/v1/realtime/calls/rtc_1/accept").respond(200)
        async with new_http_client() as client:
            api = RealtimeCalls(client, base_url="https://api.openai.com/v1", api_key=KEY)
            await api.accept("rtc_1", {"type": "realtime"})
    assert route.call_count == 1
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.anyio
async def test_a_client_that_was_never_used_closes_cleanly() -> None:
    async with new_http_client():
        pass
