"""The load peer: a lean stand-in for OpenAI's SIP side that times what the controller does.

One asyncio protocol on one loopback port serves the REST endpoints (accept, reject, refer, hangup) on
kept-alive HTTP/1.1 connections and the sideband WebSocket (``GET /v1/realtime?call_id=…``), and a client
pool sends signed ``realtime.call.incoming`` webhooks. It stamps, with one monotonic clock:

- ring-to-answer: webhook written → accept request received;
- tool reaction: ``response.function_call_arguments.done`` written → ``function_call_output`` received;
- hangup reaction: the goodbye's ``output_audio_buffer.stopped`` written → ``POST /hangup`` received;
- takeover: each sideband connect of a call (``PeerCall.attached_ns``), so that with ``keep_dropped`` (a call
  outlives a sideband its controller dropped without a close, as OpenAI's does) the bench times a controller's
  death to the re-attach by another.

It is deliberately not the scripted :class:`~sip_controller.simulator.Simulator` (which checks every body
in depth): at hundreds of calls per second and thousands of sockets the measuring side must stay cheap,
so its own delays do not pass for the controller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sip_controller.bench.wire import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ClientPool,
    Message,
    ProtocolError,
    parse_message,
    parse_ws_frames,
    request_bytes,
    response_bytes,
    secret_key,
    sign,
    ws_frame,
    ws_handshake_response,
)

USER_AGENT = "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"
CALLER_LINES = (
    "Hi, I'd like to check the status of my order, it was supposed to arrive yesterday.",
    "Sure, the order number is four five seven one two, under the name Garcia.",
    "Can you tell me whether you are open on Saturday afternoon as well?",
    "Okay, and is there anything I need to bring with me when I come in?",
)
ASSISTANT_LINES = (
    "Of course. Let me look that up for you; it should only take a moment.",
    "Thanks. I can see the order: it left our warehouse this morning and arrives tomorrow.",
    "Yes, we are open on Saturdays from nine in the morning until five in the afternoon.",
    "Just bring your order confirmation or a photo ID, and we'll take care of the rest.",
)
USAGE = {
    "total_tokens": 1460,
    "input_tokens": 1210,
    "output_tokens": 250,
    "input_token_details": {
        "text_tokens": 410,
        "audio_tokens": 800,
        "cached_tokens": 960,
        "cached_tokens_details": {"text_tokens": 380, "audio_tokens": 580},
    },
    "output_token_details": {"text_tokens": 60, "audio_tokens": 190},
}


def _dumps(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def _error_body(message: str, code: str, type_: str = "invalid_request_error") -> bytes:
    return _dumps({"error": {"message": message, "type": type_, "code": code, "param": None}})


@dataclass
class Recorder:
    """What one phase measured. The runner swaps in a fresh one per phase."""

    ring_ns: list[int] = field(default_factory=list)
    ack_ns: list[int] = field(default_factory=list)
    tool_ns: list[int] = field(default_factory=list)
    hangup_ns: list[int] = field(default_factory=list)
    webhooks_sent: int = 0
    webhooks_acked: int = 0
    webhook_errors: int = 0
    accepts: int = 0
    bad_accepts: int = 0
    rejects: int = 0
    hangups: int = 0
    greetings: int = 0
    lines: int = 0
    tool_calls: int = 0


@dataclass(eq=False)
class PeerCall:
    call_id: str
    talk: bool = False
    hold_s: float | None = None
    attach: bool = True
    sent_ns: int = 0
    accepted: bool = False
    ws: _Conn | None = None
    greeted: bool = False
    ending: bool = False
    goodbye_rid: str | None = None
    stopped_ns: int = 0
    rejected: bool = False
    closed: bool = False
    turns: int = 0
    pending_tools: dict[str, int] = field(default_factory=dict)
    #: when each sideband of this call was accepted (a second one: a re-attach after a takeover)
    attached_ns: list[int] = field(default_factory=list)
    #: when the last sideband dropped without a close handshake (its controller died)
    dropped_ns: int = 0
    #: when its accept request arrived (0: not accepted)
    accepted_ns: int = 0


class Peer:
    """The OpenAI side of the bench. ``await start()``, point ``target()`` at a webhook URL, place calls."""

    def __init__(self, *, webhook_secret: str, api_key: str, seed: int = 7) -> None:
        self.api_key = api_key
        self._auth = f"Bearer {api_key}"
        self._key = secret_key(webhook_secret)
        self.rng = random.Random(seed)
        self.rec = Recorder()
        self.calls: dict[str, PeerCall] = {}
        self.open_ws: set[_Conn] = set()
        self.port = 0
        self.transcript_interval_s = 2.0
        self.tool_interval_s = 30.0
        self.goodbye_audio_s = 0.2
        self.tool_name = "lookup_order"
        #: a sideband that drops without a close handshake leaves its call up for a re-attach (OpenAI's side
        #: keeps a call whose controller died); off: the call ends with its socket
        self.keep_dropped = False
        self._server: asyncio.Server | None = None
        self._pool: ClientPool | None = None
        self._path = "/webhooks/openai"
        self._seq = 0
        self._heap: list[tuple[int, int, str, str]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- lifecycle ------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1") -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), host, 0, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._tick(), name="peer-ticker")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.open_ws):
            conn.abort()
        if self._pool is not None:
            self._pool.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def target(self, port: int, path: str = "/webhooks/openai") -> None:
        """Send webhooks to ``127.0.0.1:port``+``path`` from now on (a new pool of kept-alive connections)."""
        if self._pool is not None:
            self._pool.close()
        self._pool = ClientPool("127.0.0.1", port)
        self._path = path

    def reset(self) -> Recorder:
        """Start a new measurement phase; returns the previous phase's recorder."""
        old, self.rec = self.rec, Recorder()
        return old

    @property
    def live(self) -> int:
        return len(self.open_ws)

    def forget_finished(self) -> None:
        for call_id in [c.call_id for c in self.calls.values() if c.ws is None]:
            del self.calls[call_id]

    # ---- placing calls --------------------------------------------------------------------------------

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _webhook(self, call_id: str) -> tuple[bytes, str]:
        n = self._next()
        webhook_id = f"wh_bench_{n:08d}_{self.rng.getrandbits(48):012x}"
        caller = f"+1415555{n % 10000:04d}"
        event = {
            "object": "event",
            "id": f"evt_{webhook_id}",
            "type": "realtime.call.incoming",
            "created_at": int(time.time()),
            "data": {
                "call_id": call_id,
                "sip_media_security": "srtp",
                "sip_headers": [
                    {"name": "From", "value": f"<sip:{caller}@sip.twilio.com>;tag={n:08d}_c3356d0b"},
                    {"name": "To", "value": "<sip:proj_bench@sip.api.openai.com;transport=tls>"},
                    {"name": "Call-ID", "value": f"{self.rng.getrandbits(128):032x}@0.0.0.0"},
                    {"name": "P-Asserted-Identity", "value": f"<sip:{caller}@sip.twilio.com>"},
                    {"name": "X-Twilio-CallSid", "value": f"CA{self.rng.getrandbits(128):032x}"},
                    {"name": "Diversion", "value": "<sip:+18005550100@sip.twilio.com>;reason=unconditional"},
                ],
            },
        }
        return _dumps(event), webhook_id

    async def place(self, *, talk: bool = False, hold_s: float | None = None, attach: bool = True) -> PeerCall:
        """Ring one call: send its signed webhook and wait for the acknowledgement (never raises)."""
        assert self._pool is not None, "call target() first"
        call = PeerCall(f"rtc_bench_{self._next():08d}_{self.rng.getrandbits(64):016x}", talk, hold_s, attach)
        self.calls[call.call_id] = call
        body, webhook_id = self._webhook(call.call_id)
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": webhook_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(self._key, webhook_id, stamp, body),
        }
        data = request_bytes("POST", self._pool.authority, self._path, headers, body)
        rec = self.rec
        rec.webhooks_sent += 1

        def stamp_sent(ns: int) -> None:
            call.sent_ns = ns

        try:
            msg, sent_ns = await self._pool.request(data, on_write=stamp_sent)
        except (OSError, TimeoutError, ProtocolError):
            rec.webhook_errors += 1
            return call
        rec.ack_ns.append(time.perf_counter_ns() - sent_ns)
        if 200 <= msg.status < 300:
            rec.webhooks_acked += 1
        else:
            rec.webhook_errors += 1
        return call

    async def place_at_rate(
        self, rate: float, count: int, max_seconds: float, *, talk: bool = False, hold_s: float | None = None,
        attach: bool = True,
    ) -> int:
        """Ring up to ``count`` calls at a steady ``rate`` for at most ``max_seconds``; returns how many."""
        start = time.perf_counter()
        placed: set[asyncio.Task[PeerCall]] = set()
        for i in range(count):
            due = start + i / rate
            now = time.perf_counter()
            if due - start > max_seconds:
                break
            if due > now:
                await asyncio.sleep(due - now)
            placed.add(asyncio.create_task(self.place(talk=talk, hold_s=hold_s, attach=attach)))
        if placed:
            await asyncio.wait(placed, timeout=15)
        return len(placed)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
        deadline = time.perf_counter() + timeout
        while not predicate():
            if time.perf_counter() > deadline:
                return False
            await asyncio.sleep(step)
        return True

    async def hang_up_all(self, timeout: float = 10.0) -> bool:
        """Every caller hangs up (the server closes each sideband); wait until all sockets are closed."""
        for conn in list(self.open_ws):
            conn.close_ws()
        ok = await self.wait_for(lambda: not self.open_ws, timeout)
        self.forget_finished()
        return ok

    # ---- REST -----------------------------------------------------------------------------------------

    def rest(self, msg: Message, now: int) -> bytes:
        if msg.headers.get("authorization") != self._auth:
            return response_bytes(401, _error_body("Incorrect API key provided.", "invalid_api_key"))
        path = urlsplit(msg.target).path
        prefix = "/v1/realtime/calls/"
        if msg.method != "POST" or not path.startswith(prefix):
            return response_bytes(404, _error_body(f"no route {msg.method} {path}", "not_found"))
        call_id, _, operation = path[len(prefix) :].partition("/")
        call = self.calls.get(call_id)
        if call is None or call.closed:
            return response_bytes(404, _error_body(f"Call {call_id} not found", "call_id_not_found"))
        rec = self.rec
        if operation == "accept":
            if call.sent_ns:
                rec.ring_ns.append(now - call.sent_ns)
            rec.accepts += 1
            call.accepted = True
            call.accepted_ns = now
            try:
                body = json.loads(msg.body)
                ok = isinstance(body, dict) and body.get("type") == "realtime"
            except ValueError:
                ok = False
            if not ok:
                rec.bad_accepts += 1
                return response_bytes(400, _error_body("session.type must be 'realtime'", "missing_required_parameter"))
            if not call.attach:
                del self.calls[call_id]
            return response_bytes(200)
        if operation == "reject":
            rec.rejects += 1
            call.rejected = True
            self.calls.pop(call_id, None)
            return response_bytes(200)
        if operation == "hangup":
            rec.hangups += 1
            if call.stopped_ns:
                rec.hangup_ns.append(now - call.stopped_ns)
            if call.ws is not None:
                asyncio.get_running_loop().call_soon(call.ws.close_ws)
            return response_bytes(200)
        if operation == "refer":
            return response_bytes(200)
        return response_bytes(404, _error_body(f"unknown operation {operation}", "not_found"))

    def upgrade(self, conn: _Conn, msg: Message, now: int) -> bytes | None:
        """Answer a sideband handshake (stamped ``now``): the HTTP error when it is refused, else None."""
        if msg.headers.get("authorization") != self._auth:
            return response_bytes(401, _error_body("Incorrect API key provided.", "invalid_api_key"))
        call_id = parse_qs(urlsplit(msg.target).query).get("call_id", [""])[0]
        call = self.calls.get(call_id)
        if call is None or not call.accepted or call.closed or call.ws is not None:
            return response_bytes(404, _error_body(f"Call {call_id} not found", "call_id_not_found"))
        key = msg.headers.get("sec-websocket-key", "")
        if not key or msg.headers.get("upgrade", "").lower() != "websocket":
            return response_bytes(400, _error_body("not a WebSocket upgrade", "bad_request"))
        conn.attach(call, ws_handshake_response(key))
        call.ws = conn
        call.attached_ns.append(now)
        self.open_ws.add(conn)
        n = self._next()
        conn.send_events(
            [{"type": "session.created", "event_id": f"event_{n}", "session": {"type": "realtime", "id": f"sess_{n}"}}]
        )
        return None

    # ---- sideband -------------------------------------------------------------------------------------

    def on_event(self, call: PeerCall, conn: _Conn, event: dict[str, Any], now: int) -> None:
        kind = event.get("type")
        if kind == "response.create":
            metadata = (event.get("response") or {}).get("metadata")
            self._respond(call, conn, metadata if isinstance(metadata, dict) else None)
        elif kind == "conversation.item.create":
            item = event.get("item") or {}
            if item.get("type") == "function_call_output":
                sent = call.pending_tools.pop(str(item.get("call_id")), None)
                if sent is not None:
                    self.rec.tool_ns.append(now - sent)
        elif kind == "session.update":
            conn.send_events([{"type": "session.updated", "event_id": f"event_{self._next()}",
                               "session": event.get("session") or {}}])

    def _turn(
        self, call: PeerCall, text: str, metadata: dict[str, Any] | None = None
    ) -> tuple[str, list[dict[str, Any]]]:
        """One spoken assistant response: created, audio started, transcript, done (audio stop is separate). The
        request's ``metadata`` comes back on the response, as OpenAI's does (the controller tells its goodbye by it)."""
        n = self._next()
        rid, iid = f"resp_{n}", f"item_{n}"
        self.rec.lines += 1
        return rid, [
            {"type": "response.created", "event_id": f"event_{n}_1",
             "response": {"id": rid, "object": "realtime.response", "status": "in_progress", "output": [],
                          "metadata": metadata}},
            {"type": "output_audio_buffer.started", "event_id": f"event_{n}_2", "response_id": rid},
            {"type": "response.output_audio_transcript.done", "event_id": f"event_{n}_3", "response_id": rid,
             "item_id": iid, "output_index": 0, "content_index": 0, "transcript": text},
            {"type": "response.done", "event_id": f"event_{n}_4",
             "response": {"id": rid, "object": "realtime.response", "status": "completed",
                          "output": [{"type": "message", "id": iid, "role": "assistant", "status": "completed"}],
                          "usage": USAGE, "metadata": metadata}},
        ]

    def _respond(self, call: PeerCall, conn: _Conn, metadata: dict[str, Any] | None = None) -> None:
        if call.ending and call.goodbye_rid is None:
            rid, events = self._turn(call, "Thank you for calling, goodbye!", metadata)
            call.goodbye_rid = rid
            conn.send_events(events)
            asyncio.get_running_loop().call_later(self.goodbye_audio_s, self._goodbye_heard, call, rid)
            return
        text = ASSISTANT_LINES[call.turns % len(ASSISTANT_LINES)] if call.greeted else "Hello! How can I help?"
        rid, events = self._turn(call, text, metadata)
        events.append({"type": "output_audio_buffer.stopped", "event_id": f"event_{rid}_5", "response_id": rid})
        conn.send_events(events)
        if not call.greeted:
            call.greeted = True
            self.rec.greetings += 1
            loop = asyncio.get_running_loop()
            if call.hold_s is not None:
                loop.call_later(call.hold_s, conn.close_ws)
            if call.talk:
                now = time.perf_counter_ns()
                self._schedule(now + int(self.rng.uniform(0, self.transcript_interval_s) * 1e9), call, "line")
                self._schedule(now + int(self.rng.uniform(0.5, 1.5) * self.tool_interval_s * 1e9), call, "tool")

    def _goodbye_heard(self, call: PeerCall, rid: str) -> None:
        if call.ws is None:
            return
        event = {"type": "output_audio_buffer.stopped", "event_id": f"event_{rid}_5", "response_id": rid}
        call.stopped_ns = time.perf_counter_ns()
        call.ws.send_events([event])

    def send_tool_call(self, call: PeerCall, name: str, arguments: str) -> None:
        if call.ws is None:
            return
        n = self._next()
        rid, iid, fc = f"resp_{n}", f"item_{n}", f"call_{n}"
        created = {"type": "response.created", "event_id": f"event_{n}_1",
                   "response": {"id": rid, "object": "realtime.response", "status": "in_progress", "output": []}}
        args_done = {"type": "response.function_call_arguments.done", "event_id": f"event_{n}_2",
                     "response_id": rid, "item_id": iid, "output_index": 0, "call_id": fc, "name": name,
                     "arguments": arguments}
        done = {"type": "response.done", "event_id": f"event_{n}_3",
                "response": {"id": rid, "object": "realtime.response", "status": "completed",
                             "output": [{"type": "function_call", "id": iid, "call_id": fc, "name": name,
                                         "arguments": arguments, "status": "completed"}],
                             "usage": USAGE}}
        call.ws.send_events([created])
        call.pending_tools[fc] = time.perf_counter_ns()
        call.ws.send_events([args_done, done])
        self.rec.tool_calls += 1

    def end_call(self, call: PeerCall) -> None:
        """The caller says goodbye: the model calls ``end_call``; its goodbye audio will take a moment."""
        call.ending = True
        self.send_tool_call(call, "end_call", '{"reason":"caller said goodbye"}')

    def talking_calls(self) -> list[PeerCall]:
        return [c.call for c in self.open_ws if c.call is not None and c.call.talk and not c.call.ending]

    def _schedule(self, due_ns: int, call: PeerCall, kind: str) -> None:
        heapq.heappush(self._heap, (due_ns, self._next(), call.call_id, kind))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter_ns()
            heap = self._heap
            while heap and heap[0][0] <= now:
                due, _, call_id, kind = heapq.heappop(heap)
                call = self.calls.get(call_id)
                if call is None or call.ws is None or call.ending:
                    continue
                if kind == "line":
                    self._line(call)
                    self._schedule(due + int(self.transcript_interval_s * 1e9), call, "line")
                else:
                    self.send_tool_call(call, self.tool_name, '{"order_id":"45712"}')
                    self._schedule(due + int(self.rng.uniform(0.5, 1.5) * self.tool_interval_s * 1e9), call, "tool")

    def _line(self, call: PeerCall) -> None:
        """Every other line the caller speaks (a caller transcript); in between the assistant answers."""
        assert call.ws is not None
        call.turns += 1
        if call.turns % 2:
            n = self._next()
            self.rec.lines += 1
            call.ws.send_events([
                {"type": "input_audio_buffer.speech_started", "event_id": f"event_{n}_1", "audio_start_ms": 0,
                 "item_id": f"item_{n}"},
                {"type": "conversation.item.input_audio_transcription.completed", "event_id": f"event_{n}_2",
                 "item_id": f"item_{n}", "content_index": 0,
                 "transcript": CALLER_LINES[(call.turns // 2) % len(CALLER_LINES)]},
            ])
        else:
            rid, events = self._turn(call, ASSISTANT_LINES[(call.turns // 2) % len(ASSISTANT_LINES)])
            events.append({"type": "output_audio_buffer.stopped", "event_id": f"event_{rid}_5", "response_id": rid})
            call.ws.send_events(events)


class _Conn(asyncio.Protocol):
    """One server-side connection: HTTP/1.1 requests until a WebSocket upgrade, then frames."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.call: PeerCall | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        self.buf += data
        try:
            if self.call is None:
                self._http(now)
            if self.call is not None and self.buf:
                self._frames(now)
        except ProtocolError:
            self.abort()

    def _http(self, now: int) -> None:
        assert self.transport is not None
        while self.call is None:
            msg = parse_message(self.buf, response=False)
            if msg is None:
                return
            if msg.method == "GET" and "upgrade" in msg.headers.get("connection", "").lower():
                refused = self.peer.upgrade(self, msg, now)
                if refused is not None:
                    self.transport.write(refused)
                    self.transport.close()
                return
            self.transport.write(self.peer.rest(msg, now))

    def attach(self, call: PeerCall, handshake: bytes) -> None:
        assert self.transport is not None
        self.call = call
        self.transport.write(handshake)

    def _frames(self, now: int) -> None:
        assert self.transport is not None
        assert self.call is not None
        for opcode, payload in parse_ws_frames(self.buf):
            if opcode == OP_TEXT:
                try:
                    event = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.peer.on_event(self.call, self, event, now)
            elif opcode == OP_PING:
                self.transport.write(ws_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                if not self.closing:
                    self.closing = True
                    self.transport.write(ws_frame(payload[:2], OP_CLOSE))
                self.transport.close()
                return

    def send_events(self, events: list[dict[str, Any]]) -> None:
        if self.transport is None or self.closing or self.transport.is_closing():
            return
        self.transport.write(b"".join(ws_frame(_dumps(e)) for e in events))

    def close_ws(self, code: int = 1000) -> None:
        """The server ends the sideband (the call is over): close frame, then TCP once the client answers."""
        if self.transport is None or self.closing or self.transport.is_closing():
            return
        self.closing = True
        self.transport.write(ws_frame(code.to_bytes(2, "big"), OP_CLOSE))
        asyncio.get_running_loop().call_later(3.0, self.abort)

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        call = self.call
        if call is not None:
            if self.closing or not self.peer.keep_dropped:
                call.closed = True
            else:  # dropped by the controller without a close: the call stays up, for a re-attach
                call.dropped_ns = time.perf_counter_ns()
            call.ws = None
            self.peer.open_ws.discard(self)
