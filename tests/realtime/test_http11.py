"""The lean keep-alive HTTP/1.1 pool against scripted loopback servers, under asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from sip_controller.realtime.http11 import Http11Pool, HttpFailure
from tests.loops import both_loops

Answer = Callable[[bytes, int], bytes | None]  # (request head + body, request number on this connection) -> bytes


anyio_backend = both_loops


def ok(body: bytes = b"", status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@dataclass
class Server:
    answer: Answer
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
                head = await reader.readuntil(b"\r\n\r\n")
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
async def serving(answer: Answer) -> AsyncIterator[Server]:
    server = Server(answer)
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
async def pool_for(server: Server, **kwargs: float) -> AsyncIterator[Http11Pool]:
    pool = Http11Pool(server.url, **kwargs)  # type: ignore[arg-type]
    try:
        yield pool
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_posts_on_one_kept_alive_connection() -> None:
    async with serving(lambda req, n: ok(b'{"n":%d}' % n, extra="X-Thing: a\r\n")) as server, pool_for(server) as pool:
        replies = [await pool.post(server.url + "/realtime/calls/c1/accept", b'{"type":"realtime"}',
                                   {"Authorization": "Bearer k", "Content-Type": "application/json"})
                   for _ in range(3)]
    assert [r.body for r in replies] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert replies[0].status == 200
    assert replies[0].is_success
    assert replies[0].reason == "OK"
    assert replies[0].headers["x-thing"] == "a"
    assert server.connections == 1
    head = server.requests[0].decode()
    assert head.startswith("POST /v1/realtime/calls/c1/accept HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in head
    assert "Authorization: Bearer k\r\n" in head
    assert "Content-Length: 19\r\n" in head
    assert head.endswith('\r\n\r\n{"type":"realtime"}')


@pytest.mark.anyio
async def test_concurrent_requests_open_connections_and_reuse_them() -> None:
    async with serving(lambda req, n: ok()) as server, pool_for(server, max_idle=4) as pool:
        await asyncio.gather(*(pool.post(server.url + "/x", b"", {}) for _ in range(10)))
        opened = server.connections
        await asyncio.gather(*(pool.post(server.url + "/x", b"", {}) for _ in range(4)))
        assert server.connections == opened  # four idle ones were kept and reused
        assert pool.open_connections == 4
    assert opened == 10


@pytest.mark.anyio
async def test_chunked_answers_and_error_statuses() -> None:
    chunked = b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\nRetry-After: 2\r\n\r\n" \
              b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    async with serving(lambda req, n: chunked) as server, pool_for(server) as pool:
        reply = await pool.post(server.url + "/x", b"", {})
        again = await pool.post(server.url + "/x", b"", {})
    assert (reply.status, reply.body, reply.headers["retry-after"]) == (429, b"hello world", "2")
    assert not reply.is_success
    assert again.body == b"hello world"
    assert server.connections == 1


@pytest.mark.anyio
async def test_connection_close_answers_are_not_reused() -> None:
    async with serving(lambda req, n: ok(b"x", extra="Connection: close\r\n")) as server, pool_for(server) as pool:
        for _ in range(2):
            assert (await pool.post(server.url + "/x", b"", {})).body == b"x"
    assert server.connections == 2


@pytest.mark.anyio
async def test_an_answer_delimited_by_the_close_is_complete() -> None:
    async with serving(lambda req, n: b"HTTP/1.0 200 OK\r\n\r\nuntil-close") as server, pool_for(server) as pool:
        task = asyncio.create_task(pool.post(server.url + "/x", b"", {}))
        while not server.requests:
            await asyncio.sleep(0.01)
        server.writers[0].close()
        reply = await task
    assert reply.body == b"until-close"


@pytest.mark.anyio
async def test_a_kept_alive_connection_the_server_dropped_is_replaced_and_the_request_sent_again() -> None:
    # the server answers once per connection, then closes without answering the next request on it
    async with serving(lambda req, n: ok(b"fresh") if n == 0 else None) as server, pool_for(server) as pool:
        assert (await pool.post(server.url + "/x", b"1", {})).body == b"fresh"
        assert (await pool.post(server.url + "/x", b"2", {})).body == b"fresh"
    assert server.connections == 2
    assert [r.endswith(b"2") for r in server.requests] == [False, True, True]


@pytest.mark.anyio
async def test_a_close_on_a_new_connection_is_a_failure_not_a_retry() -> None:
    async with serving(lambda req, n: None) as server, pool_for(server) as pool:
        with pytest.raises(HttpFailure, match="closed before the answer"):
            await pool.post(server.url + "/x", b"", {})
    assert server.connections == 1


@pytest.mark.anyio
async def test_an_idle_connection_closed_by_the_server_is_not_used() -> None:
    async with serving(lambda req, n: ok()) as server, pool_for(server) as pool:
        await pool.post(server.url + "/x", b"", {})
        server.writers[0].close()
        for _ in range(50):
            if pool.open_connections == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.open_connections == 0  # the loop told the protocol at once: nothing was polled
        await pool.post(server.url + "/x", b"", {})
    assert server.connections == 2


@pytest.mark.anyio
async def test_a_truncated_answer_fails() -> None:
    async with serving(lambda req, n: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") as server, \
            pool_for(server) as pool:
        task = asyncio.create_task(pool.post(server.url + "/x", b"", {}))
        while not server.requests:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        server.writers[0].close()
        with pytest.raises(HttpFailure, match="before the answer was complete"):
            await task


@pytest.mark.anyio
async def test_garbage_is_a_failure_and_the_connection_is_dropped() -> None:
    async with serving(lambda req, n: b"SMTP ready\r\n\r\n") as server, pool_for(server) as pool:
        with pytest.raises(HttpFailure, match="malformed HTTP answer"):
            await pool.post(server.url + "/x", b"", {})
        assert pool.open_connections == 0


@pytest.mark.anyio
async def test_a_silent_server_times_out() -> None:
    async with serving(lambda req, n: b"") as server, pool_for(server, read_timeout_s=0.2) as pool:
        with pytest.raises(HttpFailure, match="ReadTimeout") as info:
            await pool.post(server.url + "/x", b"", {})
    assert info.value.timeout
    assert pool.open_connections == 0


@pytest.mark.anyio
async def test_a_refused_connection_fails_fast() -> None:
    async with serving(lambda req, n: ok()) as server:
        url = server.url
    pool = Http11Pool(url)
    with pytest.raises(HttpFailure, match="ConnectError"):
        await pool.post(url + "/x", b"", {})
    await pool.aclose()


@pytest.mark.anyio
async def test_idle_connections_past_the_keepalive_are_closed() -> None:
    async with serving(lambda req, n: ok()) as server, pool_for(server, keepalive_s=0.0) as pool:
        await pool.post(server.url + "/x", b"", {})
        await asyncio.sleep(0.01)
        await pool.post(server.url + "/x", b"", {})
    assert server.connections == 2


@pytest.mark.anyio
async def test_misuse_is_refused() -> None:
    async with serving(lambda req, n: ok()) as server, pool_for(server) as pool:
        with pytest.raises(ValueError, match="not under"):
            await pool.post("http://elsewhere.example/v1/x", b"", {})
        with pytest.raises(ValueError, match="line break"):
            await pool.post(server.url + "/x", b"", {"X-Evil": "a\r\nInjected: yes"})
        await pool.aclose()
        with pytest.raises(HttpFailure, match="closed"):
            await pool.post(server.url + "/x", b"", {})
    assert server.requests == []


def test_origins_and_host_headers() -> None:
    with pytest.raises(ValueError, match="http"):
        Http11Pool("ftp://x/v1")
    assert Http11Pool("https://api.openai.com/v1")._host_header == "api.openai.com"
    assert Http11Pool("http://127.0.0.1:8080/v1")._host_header == "127.0.0.1:8080"
    assert Http11Pool("http://[::1]/v1")._host_header == "[::1]"
