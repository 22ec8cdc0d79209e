"""The scripted caller and model behind one simulated call, and the sideband it talks over.

A :class:`CallRuntime` owns one call: its ring timer, its script (greeting, caller turns, hang-up), the
model's responses with their audio timeline, and the sideband socket. Every task it starts is its own
and is cancelled when the call ends or the simulator stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from .errors import (
    ApiError,
    invalid_type,
    invalid_value,
    missing_parameter,
    server_error,
    stored_prompt_unavailable,
)
from .events import (
    UsageMeter,
    assistant_seconds,
    caller_seconds,
    new_event_id,
    new_id,
    spoken_line,
    transcription_usage,
)
from .faults import OUT_OF_ORDER_FLUSH_S, FaultInjector, Faults
from .records import ClientEvent, ResponseKind, ResponseRecord, ResponseSource, SimCall
from .rules import (
    assess_audio,
    auto_response_enabled,
    default_session,
    merge_patch,
    output_has_audio,
    validate_session,
    worse,
)
from .scenario import EndedBy, HoldMusic, Step, ToolCall

log = logging.getLogger(__name__)

TOOL_FOLLOWUP_WAIT = 3.0  # nominal seconds the caller waits for the controller to answer a tool call
DTMF_GAP = 0.2
REFER_COMPLETES_AFTER = 0.3
#: transcripts that are hold music or a recorded announcement, not a person (case-insensitive substrings)
DEFAULT_HOLD_MARKERS: tuple[str, ...] = (
    "[hold music]",
    "[music]",
    "♪",
    "please hold",
    "please stay on the line",
    "your call is important",
    "all of our agents are",
    "calls are answered in the order",
)
CLIENT_EVENT_TYPES = [
    "session.update",
    "conversation.item.create",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
]


@dataclass
class SimContext:
    """What every call and the HTTP app share."""

    api_key: str
    time_scale: float
    project_id: str
    reject_vad_tuning: bool
    session_update_delay: float = 0.15
    faults: Faults = field(default_factory=Faults)
    hold_markers: tuple[str, ...] = DEFAULT_HOLD_MARKERS
    started: float = field(default_factory=time.monotonic)
    runtimes: dict[str, CallRuntime] = field(default_factory=dict)
    task_errors: list[BaseException] = field(default_factory=list)

    def now(self) -> float:
        """Seconds since the simulator started."""
        return round(time.monotonic() - self.started, 6)

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale


@dataclass
class _Sideband:
    ws: WebSocket
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": new_event_id(), **fields}


def _abort_transport(ws: WebSocket) -> bool:
    """Cut the connection under ``ws`` without a close frame (the peer sees 1006); False if not possible."""
    send: object = ws._send
    for _ in range(10):  # unwrap the middleware's ``sender`` closures down to the server's bound method
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if isinstance(transport, asyncio.Transport):
            transport.abort()
            return True
        cells = getattr(send, "__closure__", None) or ()
        inner = [c.cell_contents for c in cells if callable(getattr(c, "cell_contents", None))]
        named = [f for f in inner if getattr(f, "__name__", "") in ("send", "asgi_send", "sender")]
        if not named:
            return False
        send = named[0]
    return False


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class CallRuntime:
    """One call's behaviour; the REST handlers and the sideband endpoint call into it."""

    def __init__(self, ctx: SimContext, record: SimCall) -> None:
        self.ctx = ctx
        self.rec = record
        self.spec = record.spec
        faults = ctx.faults.merged(record.spec.faults)
        self.faults = FaultInjector(faults, record.name, record)
        if faults != Faults():
            record.fault_seed = self.faults.seed
        self._socket_up = asyncio.Event()
        self._held: str | None = None
        self._held_flush: asyncio.Task[None] | None = None
        self.accepted = asyncio.Event()
        self.attached = asyncio.Event()
        self._conn: _Sideband | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._then: deque[str] = deque()
        self._pending_turn: Step | None = None
        self._client_responses: list[ResponseRecord] = []
        self._client_responded = asyncio.Event()
        self._tool_call_ids: set[str] = set()
        self._playing: dict[str, ResponseRecord] = {}
        self._playback: dict[str, asyncio.Task[None]] = {}
        self._playing_until = 0.0
        self._audio_idle = asyncio.Event()
        self._audio_idle.set()
        self._usage = UsageMeter()
        self._caller_audio_ms = 0
        self._last_caller_text: str | None = None
        self._last_item_id: str | None = None
        self._broken_error_sent = False
        self._stored_prompt: object = None
        self._prompt_error_sent = False
        self._silenced = False  # the session failed to start: no assistant audio, ever
        # session.update: validated at once against ``_projected`` (the effective session with every
        # pending patch merged), applied to ``rec.session`` in order after the update delay.
        self._projected: dict[str, Any] = {}
        self._updates: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self._pending_updates = 0
        self._applier: asyncio.Task[None] | None = None

    # ---- tasks and lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start ringing: the caller waits for an accept, then runs the script."""
        self.spawn(self._run(), "script")

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"sim:{self.rec.call_id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.ctx.task_errors.append(exc)
            log.error("simulator task failed: %s", task.get_name(), exc_info=exc)

    @property
    def is_ended(self) -> bool:
        return self.rec.ended_by is not None

    @property
    def audio_playing(self) -> bool:
        return bool(self._playing)

    async def end(self, by: EndedBy, *, close_code: int = 1000) -> bool:
        """End the call once: record who ended it, stop its tasks, close the sideband."""
        if self.rec.ended_by is not None:
            return False
        self.rec.ended_by = by
        self.rec.ended_at = self.ctx.now()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self._playing.clear()
        self._playback.clear()
        self._audio_idle.set()
        try:
            await self._close_socket(close_code)
        finally:
            self.rec.ended.set()
        return True

    async def shutdown(self) -> None:
        """The simulator is stopping: cancel and await every task, close the socket (1001)."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_socket(1001)

    # ---- REST side -----------------------------------------------------------------------------

    def accept(self, body: Mapping[str, Any]) -> None:
        """A valid ``/accept``. Repeats are counted and otherwise ignored."""
        self.rec.accept_count += 1
        if self.accepted.is_set():
            return
        self.rec.accepted_at = self.ctx.now()
        patch = {key: value for key, value in body.items() if key != "voice"}
        base = default_session(new_id("sess_", 12), int(time.time()) + 3600)
        self.rec.session = merge_patch(base, patch)
        self._projected = copy.deepcopy(self.rec.session)
        state = "broken" if "voice" in body else assess_audio(patch, self.rec.session)
        self.rec.audio_state = worse(self.rec.audio_state, state)
        prompt = body.get("prompt")
        if isinstance(prompt, Mapping):
            # 200 now; the session cannot load the stored prompt, which shows only on the sideband.
            self._stored_prompt = prompt.get("id")
            self._silenced = True
            self.rec.audio_state = worse(self.rec.audio_state, "static")
        self.accepted.set()

    async def reject(self, status_code: int) -> None:
        self.rec.reject_status = status_code
        await self.end("reject")

    async def agent_hangup(self) -> None:
        now = self.ctx.now()
        self.rec.hangup_count += 1
        self.rec.hangup_at = now
        self.rec.audio_playing_at_hangup = self.audio_playing
        last = self.rec.last_audio_stopped_at
        self.rec.hangup_gap_s = None if last is None else round(now - last, 6)
        await self.end("agent")

    def refer(self, target_uri: str) -> ApiError | None:
        """Record a REFER; what follows depends on the spec's ``refer`` mode."""
        mode = self.spec.refer_mode(len(self.rec.refers))
        self.rec.refers.append(target_uri)
        if mode == "fail":
            return server_error()
        if mode == "succeed":
            self.spawn(self._complete_refer(), "refer")
        return None

    async def _complete_refer(self) -> None:
        await asyncio.sleep(self.ctx.scaled(REFER_COMPLETES_AFTER))
        await self.end("refer")

    # ---- sideband ------------------------------------------------------------------------------

    @property
    def has_socket(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def attach(self, ws: WebSocket) -> None:
        """A sideband connected (already accepted at the WebSocket level)."""
        conn = self._conn = _Sideband(ws)
        self.rec.sideband_connects += 1
        self._socket_up.set()
        drop_at = self.faults.drop_delay()
        if drop_at is not None:
            self.spawn(self._drop_later(conn, self.ctx.scaled(drop_at)), "sideband-drop")
        await self.send(_event("session.created", session=copy.deepcopy(self.rec.session)))
        if self.rec.audio_state == "broken" and not self._broken_error_sent:
            self._broken_error_sent = True
            await self.send_error(
                ApiError(
                    400,
                    "The session failed to start audio: 'voice' is not a session parameter. "
                    "Set the voice at 'audio.output.voice'.",
                    code="unknown_parameter",
                    param="voice",
                ),
                None,
            )
        if self._silenced and not self._prompt_error_sent:
            self._prompt_error_sent = True
            await self.send_error(stored_prompt_unavailable(self._stored_prompt), None)
        self.attached.set()

    def detach(self, ws: WebSocket) -> None:
        if self._conn is not None and self._conn.ws is ws:
            self._conn.closed = True
            self._conn = None
            self._socket_up.clear()

    async def _drop_later(self, conn: _Sideband, delay: float) -> None:
        """Fault: drop the sideband (no close frame, or 1011) while the call itself stays up."""
        await asyncio.sleep(delay)
        mode = self.faults.faults.drop_sideband_mode
        async with conn.lock:
            if conn.closed or self._conn is not conn or self.is_ended:
                return
            conn.closed = True
            self._conn = None
            self._socket_up.clear()
            self.rec.sideband_drops += 1
            self.faults.note(self.ctx.now(), "sideband_drop", mode=mode)
            if mode == "abrupt" and _abort_transport(conn.ws):
                return
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await conn.ws.close(1011)

    async def send(self, event: dict[str, Any]) -> None:
        conn = self._conn
        if conn is None:
            return
        text = json.dumps(event)
        frames = [text]
        kind = self.faults.malformed(event, self.ctx.now())
        if kind == "out_of_order" and self._held is None:
            self._held = text  # sent right after the next event, or shortly if none comes
            self._held_flush = self.spawn(self._flush_held(), "out-of-order")
            return
        if kind == "duplicate":
            frames.append(text)
        elif kind is not None and kind != "out_of_order":
            frames.insert(0, self.faults.bad_frame(kind, event))
        if self._held is not None:
            frames.append(self._held)
            self._held = None
            if self._held_flush is not None and self._held_flush is not asyncio.current_task():
                self._held_flush.cancel()
            self._held_flush = None
        await self._send_frames(conn, frames)

    async def _send_frames(self, conn: _Sideband, frames: list[str]) -> None:
        async with conn.lock:
            for frame in frames:
                if conn.closed:
                    return
                try:
                    await conn.ws.send_text(frame)
                except (WebSocketDisconnect, RuntimeError, OSError):
                    conn.closed = True

    async def _flush_held(self) -> None:
        await asyncio.sleep(OUT_OF_ORDER_FLUSH_S)
        held, self._held = self._held, None
        self._held_flush = None
        conn = self._conn
        if held is not None and conn is not None:
            await self._send_frames(conn, [held])

    async def send_error(self, error: ApiError, client_event_id: str | None) -> None:
        event = _event("error", error=error.event_error(client_event_id))
        self.rec.errors_sent.append(event)
        if self.rec.first_error_at is None:
            self.rec.first_error_at = self.ctx.now()
        await self.send(event)

    async def _close_socket(self, code: int) -> None:
        conn = self._conn
        if conn is None:
            return
        async with conn.lock:
            if conn.closed:
                return
            conn.closed = True
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await conn.ws.close(code)
                self.rec.sideband_close_code = code

    async def on_client_text(self, text: str) -> None:
        """Handle one text frame from the controller."""
        t = self.ctx.now()
        try:
            event = json.loads(text)
        except ValueError:
            self.rec.client_events.append(ClientEvent(t, "<invalid>", text))
            await self.send_error(ApiError(400, "Invalid JSON in client event.", code="invalid_json"), None)
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.rec.client_events.append(ClientEvent(t, "<invalid>", event))
            await self.send_error(missing_parameter("type"), None)
            return
        kind: str = event["type"]
        self.rec.client_events.append(ClientEvent(t, kind, event))
        raw_id = event.get("event_id")
        client_event_id = raw_id if isinstance(raw_id, str) else None
        handlers: dict[str, Callable[[dict[str, Any], str | None], Awaitable[None]]] = {
            "session.update": self._session_update,
            "conversation.item.create": self._item_create,
            "conversation.item.delete": self._item_delete,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": self._audio_clear,
        }
        handler = handlers.get(kind)
        if handler is None:
            await self.send_error(invalid_value("type", kind, CLIENT_EVENT_TYPES), client_event_id)
            return
        await handler(event, client_event_id)

    async def _item_delete(self, event: dict[str, Any], eid: str | None) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str) or not item_id:
            await self.send_error(missing_parameter("item_id"), eid)
            return
        if not self._usage.forget(item_id):
            await self.send_error(
                ApiError(400, f"Item with item_id '{item_id}' not found.", code="item_not_found", param="item_id"),
                eid,
            )
            return
        await self.send(_event("conversation.item.deleted", item_id=item_id))

    async def on_client_bytes(self) -> None:
        self.rec.client_events.append(ClientEvent(self.ctx.now(), "<invalid>", "<binary frame>"))
        await self.send_error(ApiError(400, "Binary frames are not supported.", code="invalid_json"), None)

    async def _session_update(self, event: dict[str, Any], eid: str | None) -> None:
        if "session" not in event:
            await self.send_error(missing_parameter("session"), eid)
            return
        patch = event["session"]
        error = validate_session(patch, prefix="session.", reject_vad_tuning=False, session=self._projected)
        if error is None and self._voice_locked(patch):
            error = ApiError(
                400,
                "Cannot update a conversation's voice if assistant audio is present.",
                code="cannot_update_voice",
                param="session.audio.output.voice",
            )
        if error is not None:
            await self.send_error(error, eid)
            return
        if self.is_ended:
            return
        self.rec.session_updates.append(copy.deepcopy(patch))
        self._projected = merge_patch(self._projected, patch)
        delay = self.update_delay
        if delay <= 0 and self._pending_updates == 0:
            await self._apply_update(patch)
            return
        self._pending_updates += 1
        self._updates.put_nowait((time.monotonic() + delay, copy.deepcopy(patch)))
        if self._applier is None:
            self._applier = self.spawn(self._apply_updates(), "session-update")

    @property
    def update_delay(self) -> float:
        """Real seconds between a valid ``session.update`` and its apply (``session.updated``)."""
        nominal = self.spec.session_update_delay
        if nominal is None:
            nominal = self.ctx.session_update_delay
        return self.ctx.scaled(nominal)

    async def _apply_updates(self) -> None:
        """Apply queued patches one by one, each once its delay has passed, in the order they came."""
        while True:
            due, patch = await self._updates.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self._apply_update(patch)
            self._pending_updates -= 1

    async def _apply_update(self, patch: Mapping[str, Any]) -> None:
        self.rec.session = merge_patch(self.rec.session, patch)
        self.rec.session_version += 1
        self.rec.session_updated_at.append(self.ctx.now())
        self.rec.audio_state = worse(self.rec.audio_state, assess_audio(patch, self.rec.session))
        await self.send(_event("session.updated", session=copy.deepcopy(self.rec.session)))

    def _voice_locked(self, patch: Mapping[str, Any]) -> bool:
        voice = (patch.get("audio") or {}).get("output", {}).get("voice")
        current = self._projected.get("audio", {}).get("output", {}).get("voice")
        spoke = any(r.audio_started_at is not None for r in self.rec.responses)
        return voice is not None and voice != current and spoke

    async def _item_create(self, event: dict[str, Any], eid: str | None) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            error = missing_parameter("item") if item is None else invalid_type("item", "an object", item)
            await self.send_error(error, eid)
            return
        kind = item.get("type")
        if kind == "function_call_output":
            for key in ("call_id", "output"):
                if not isinstance(item.get(key), str):
                    await self.send_error(
                        missing_parameter(f"item.{key}")
                        if key not in item
                        else invalid_type(f"item.{key}", "a string", item.get(key)),
                        eid,
                    )
                    return
            if item["call_id"] not in self._tool_call_ids:
                await self.send_error(
                    ApiError(
                        400,
                        f"Tool call ID '{item['call_id']}' not found in conversation.",
                        code="invalid_value",
                        param="item.call_id",
                    ),
                    eid,
                )
                return
            self.rec.function_outputs.append({"call_id": item["call_id"], "output": item["output"]})
            self._usage.tool_output(item["output"])
        elif kind not in ("message", "function_call"):
            await self.send_error(
                invalid_value("item.type", kind, ["message", "function_call", "function_call_output"]), eid
            )
            return
        created = {"id": new_id("item_", 12), "object": "realtime.item", "status": "completed", **item}
        previous, self._last_item_id = self._last_item_id, created["id"]
        await self.send(_event("conversation.item.created", previous_item_id=previous, item=created))

    async def _response_create(self, event: dict[str, Any], eid: str | None) -> None:
        options = event.get("response", {})
        if not isinstance(options, dict):
            await self.send_error(invalid_type("response", "an object", options), eid)
            return
        modalities = options.get("output_modalities")
        if modalities is not None and (
            not isinstance(modalities, list) or len(modalities) != 1 or modalities[0] not in ("audio", "text")
        ):
            await self.send_error(
                invalid_value("response.output_modalities", modalities, ["audio", "text"]), eid
            )
            return
        metadata = options.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            await self.send_error(invalid_type("response.metadata", "an object", metadata), eid)
            return
        if self.is_ended:
            return
        instructions = options.get("instructions")
        if options.get("conversation") == "none":
            # Out of band: answers a question about the call, does not take the caller's turn or a queued line.
            prompt = instructions if isinstance(instructions, str) else ""
            await self._respond_out_of_band(prompt, modalities=modalities, metadata=metadata)
            return
        turn, self._pending_turn = self._pending_turn, None
        if turn is not None:
            await self._respond(
                "client", text=turn.reply, tool=turn.tool, then=turn.then, modalities=modalities, metadata=metadata
            )
            return
        if self._then:
            text = self._then.popleft()
        elif isinstance(instructions, str) and instructions.strip():
            text = spoken_line(instructions)
        else:
            text = "Okay."
        await self._respond("client", text=text, modalities=modalities, metadata=metadata)

    async def _response_cancel(self, event: dict[str, Any], eid: str | None) -> None:
        # Scripted responses complete at once, so there is never one in progress to cancel.
        await self.send_error(
            ApiError(
                400, "Cancellation failed: no active response found.", code="response_cancel_not_active"
            ),
            eid,
        )

    async def _audio_clear(self, event: dict[str, Any], eid: str | None) -> None:
        now = self.ctx.now()
        cleared = list(self._playing.values())
        for response in cleared:
            task = self._playback.pop(response.id, None)
            if task is not None:
                task.cancel()
            response.audio_cleared = True
            response.audio_stopped_at = now
        self._playing.clear()
        self._playing_until = now
        self._audio_idle.set()
        if cleared:
            self.rec.last_audio_stopped_at = now
        last = cleared[-1].id if cleared else None
        await self.send(_event("output_audio_buffer.cleared", response_id=last))

    # ---- the model -----------------------------------------------------------------------------

    async def _respond(
        self,
        source: ResponseSource,
        *,
        text: str | None = None,
        tool: ToolCall | None = None,
        then: str | None = None,
        modalities: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ResponseRecord:
        session = self.rec.session
        out_modalities = modalities or session.get("output_modalities") or ["audio"]
        has_audio = output_has_audio({"output_modalities": out_modalities})
        kind: ResponseKind = "tool" if tool is not None else ("audio" if has_audio else "text")
        response = ResponseRecord(
            id=new_id("resp_", 12),
            kind=kind,
            source=source,
            transcript=text or "",
            created_at=self.ctx.now(),
            tool_name=tool.name if tool else None,
            session_version=self.rec.session_version,
            metadata=metadata,
        )
        self.rec.responses.append(response)
        if source == "client":
            self._client_responses.append(response)
            self._client_responded.set()
        base = {
            "id": response.id,
            "object": "realtime.response",
            "output_modalities": out_modalities,
            "metadata": metadata,
        }
        await self.send(
            _event(
                "response.created", response={**base, "status": "in_progress", "output": [], "usage": None}
            )
        )
        seconds = assistant_seconds(text or "") if kind == "audio" else 0.0
        plays = kind == "audio" and self.rec.audio_state != "broken" and not self._silenced
        ends_at = 0.0
        if plays:
            now = self.ctx.now()
            # one output buffer: a response made while audio still plays is heard after it
            starts_at = max(now, self._playing_until)
            ends_at = starts_at + self.ctx.scaled(seconds)
            self._playing_until = ends_at
            self._playing[response.id] = response
            self._audio_idle.clear()
            if starts_at <= now:
                response.audio_started_at = now
                await self.send(_event("output_audio_buffer.started", response_id=response.id))
            else:
                self.spawn(self._start_audio_later(response, starts_at), "playback-start")
        output: list[dict[str, Any]] = []
        if tool is not None:
            output.append(await self._emit_tool_call(response, tool))
            if then is not None:
                self._then.append(then)
        elif text is not None:
            output.append(await self._emit_text(response, text, audio=kind == "audio"))
        out_text = text or (json.dumps(tool.arguments) if tool else "")
        usage = self._usage.bill(session, out_text=out_text, out_audio_seconds=seconds)
        await self.send(
            _event(
                "response.done",
                response={
                    **base,
                    "status": "completed",
                    "status_details": None,
                    "output": output,
                    "conversation_id": None,
                    "usage": usage,
                },
            )
        )
        if plays and not self.is_ended:
            self._playback[response.id] = self.spawn(self._finish_audio(response, ends_at), "playback")
        return response

    def hold_check_answer(self) -> str:
        """What the scripted model answers to "is a person speaking?": "no" while the latest caller transcript
        is hold music or an announcement (one of the hold markers), "yes" otherwise."""
        latest = (self._last_caller_text or "").casefold()
        on_hold = not latest.strip() or any(marker in latest for marker in self.ctx.hold_markers)
        return "no" if on_hold else "yes"

    async def _respond_out_of_band(
        self, prompt: str, *, modalities: list[str] | None, metadata: dict[str, Any] | None
    ) -> ResponseRecord:
        """``conversation: "none"``: a text-only answer (the scripted model treats every out-of-band question
        as a hold check), no audio events, nothing added to the conversation or the transcripts."""
        text = self.hold_check_answer()
        out_modalities = modalities or ["text"]
        response = ResponseRecord(
            id=new_id("resp_", 12),
            kind="text",
            source="client",
            transcript=text,
            created_at=self.ctx.now(),
            session_version=self.rec.session_version,
            out_of_band=True,
            metadata=metadata,
        )
        self.rec.responses.append(response)
        base = {
            "id": response.id,
            "object": "realtime.response",
            "output_modalities": out_modalities,
            "metadata": metadata,
            "conversation_id": None,
        }
        await self.send(
            _event(
                "response.created", response={**base, "status": "in_progress", "output": [], "usage": None}
            )
        )
        item = {
            "id": new_id("item_", 12),
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text}],
        }
        usage = self._usage.bill_out_of_band(prompt=prompt, out_text=text)
        await self.send(
            _event(
                "response.done",
                response={**base, "status": "completed", "status_details": None, "output": [item], "usage": usage},
            )
        )
        return response

    async def _emit_text(self, response: ResponseRecord, text: str, *, audio: bool) -> dict[str, Any]:
        item_id = new_id("item_", 12)
        where = {"response_id": response.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        if audio:
            content = {"type": "output_audio", "transcript": text}
            await self.send(_event("response.output_audio_transcript.done", **where, transcript=text))
        else:
            content = {"type": "output_text", "text": text}
            await self.send(_event("response.output_text.done", **where, text=text))
        self.rec.transcripts.append(
            {"role": "assistant", "text": text, "t": self.ctx.now(), "response_id": response.id}
        )
        self._last_item_id = item_id
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [content],
        }

    async def _emit_tool_call(self, response: ResponseRecord, tool: ToolCall) -> dict[str, Any]:
        item_id = new_id("item_", 12)
        call_id = new_id("call_", 8)
        arguments = json.dumps(tool.arguments)
        response.tool_call_id = call_id
        self._tool_call_ids.add(call_id)
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "completed",
            "call_id": call_id,
            "name": tool.name,
            "arguments": arguments,
        }
        await self.send(
            _event("response.output_item.done", response_id=response.id, output_index=0, item=item)
        )
        await self.send(
            _event(
                "response.function_call_arguments.done",
                response_id=response.id,
                item_id=item_id,
                output_index=0,
                call_id=call_id,
                name=tool.name,
                arguments=arguments,
            )
        )
        self._last_item_id = item_id
        return item

    async def _start_audio_later(self, response: ResponseRecord, starts_at: float) -> None:
        await asyncio.sleep(max(0.0, starts_at - self.ctx.now()))
        if response.id in self._playing and not self.is_ended:  # not cleared meanwhile
            response.audio_started_at = self.ctx.now()
            await self.send(_event("output_audio_buffer.started", response_id=response.id))

    async def _finish_audio(self, response: ResponseRecord, ends_at: float) -> None:
        await asyncio.sleep(max(0.0, ends_at - self.ctx.now()))
        now = self.ctx.now()
        self._playing.pop(response.id, None)
        self._playback.pop(response.id, None)
        response.audio_stopped_at = now
        self.rec.last_audio_stopped_at = now
        await self.send(_event("output_audio_buffer.stopped", response_id=response.id))
        # Only now may the caller speak again, so ``stopped`` always precedes the next caller event.
        if not self._playing:
            self._audio_idle.set()

    # ---- the caller ----------------------------------------------------------------------------

    async def _run(self) -> None:
        spec, scaled = self.spec, self.ctx.scaled
        ring = spec.ring_timeout
        gives_up = self.faults.faults.hangup_while_ringing
        if gives_up is not None and gives_up < ring:
            ring = gives_up
        if not await _wait(self.accepted, scaled(ring)):
            if gives_up is not None:
                self.faults.note(self.ctx.now(), "hangup_while_ringing")
            await self.end("missed")
            return
        try:
            async with asyncio.timeout(scaled(spec.max_call_seconds)):
                await self.attached.wait()
                await self._greeting()
                for step in spec.steps:
                    await self._audio_idle.wait()
                    await self._socket_up.wait()  # a dropped sideband: wait for the reconnect
                    if self.is_ended:
                        return
                    await self._step(step)
                await self.rec.ended.wait()
        except TimeoutError:
            self.rec.max_call_reached = not self.is_ended
        await self.end("caller")

    async def _greeting(self) -> None:
        if not await _wait(self._client_responded, self.ctx.scaled(self.spec.greeting_wait)):
            return
        greeting = self._client_responses[0]
        if greeting.audio_started_at is None:
            return
        await self._audio_idle.wait()
        self.rec.greeting_heard = greeting.audio_stopped_at is not None and not greeting.audio_cleared

    async def _step(self, step: Step) -> None:
        kind = step.kind
        if kind == "say":
            await self._caller_says(step)
        elif kind == "wait":
            await asyncio.sleep(self.ctx.scaled(step.wait or 0.0))
        elif kind == "hangup":
            await self.end("caller")
        elif kind == "hold_music":
            assert step.hold_music is not None
            await self._hold_music(step.hold_music)
        else:
            for digit in step.dtmf or "":
                await self.send(
                    _event(
                        "input_audio_buffer.dtmf_event_received", event=digit, received_at=int(time.time())
                    )
                )
                await asyncio.sleep(self.ctx.scaled(DTMF_GAP))

    async def _caller_says(self, step: Step) -> None:
        text = step.say or ""
        await self._caller_segment(text, caller_seconds(text))
        if step.reply is None and step.tool is None:
            return
        self._client_responded.clear()
        if auto_response_enabled(self.rec.session):
            await self._respond("auto", text=step.reply, tool=step.tool, then=step.then)
        else:
            self._pending_turn = step
        if step.tool is not None or self._pending_turn is not None:
            # Give the controller its turn (function output + response.create) before speaking again.
            await _wait(self._client_responded, self.ctx.scaled(TOOL_FOLLOWUP_WAIT))

    async def _hold_music(self, music: HoldMusic) -> None:
        """The line plays hold music: a speech segment every ``every`` seconds for ``seconds`` in all. While the
        session answers on its own, the model answers each segment (the money hold mode saves). The music does
        not wait for the model: segments come on schedule, whatever is playing."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + self.ctx.scaled(music.seconds)
        count = max(1, int(music.seconds // music.every))
        for index in range(count):
            due = start + self.ctx.scaled(index * music.every)
            await asyncio.sleep(max(0.0, due - loop.time()))
            if self.is_ended:
                return
            await self._socket_up.wait()
            await self._caller_segment(music.text, music.segment)
            self.rec.hold_segments += 1
            if auto_response_enabled(self.rec.session):
                await self._respond("auto", text=music.reply)
        await asyncio.sleep(max(0.0, end - loop.time()))

    async def _caller_segment(self, text: str, seconds: float) -> None:
        """The far side speaks (or music plays) for ``seconds``: speech edges, commit, transcription."""
        item_id = new_id("item_", 12)
        await self.send(
            _event("input_audio_buffer.speech_started", audio_start_ms=self._caller_audio_ms, item_id=item_id)
        )
        await asyncio.sleep(self.ctx.scaled(seconds))
        self._caller_audio_ms += round(seconds * 1000)
        await self.send(
            _event("input_audio_buffer.speech_stopped", audio_end_ms=self._caller_audio_ms, item_id=item_id)
        )
        previous, self._last_item_id = self._last_item_id, item_id
        await self.send(_event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id))
        # Recorded before the transcription goes out, so a check the controller sends on it sees this line.
        self._last_caller_text = text
        self.rec.transcripts.append({"role": "caller", "text": text, "t": self.ctx.now()})
        self._usage.caller_spoke(text, seconds, item_id)
        completed: dict[str, Any] = {"item_id": item_id, "content_index": 0, "transcript": text}
        usage = transcription_usage(self.rec.session, text, seconds)
        if usage is not None:
            completed["usage"] = usage
        await self.send(_event("conversation.item.input_audio_transcription.completed", **completed))
