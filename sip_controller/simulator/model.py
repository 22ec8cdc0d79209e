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
    unknown_parameter,
)
from .events import (
    UsageMeter,
    assistant_seconds,
    caller_seconds,
    new_id,
    spoken_line,
    text_tokens,
    transcription_usage,
)
from .faults import OUT_OF_ORDER_FLUSH_S, FaultInjector, Faults, ResponseFailure
from .observe import WireKind, WireObserver, WireRecord, notify
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
from .wire import (
    ItemStatus,
    RateLimitMeter,
    as_output_item,
    assistant_message,
    char_chunks,
    function_call,
    output_content,
    server_event,
    status_details,
    streamed_part,
    text_chunks,
    user_audio,
    zero_usage,
)

log = logging.getLogger(__name__)

TOOL_FOLLOWUP_WAIT = 3.0  # nominal seconds the caller waits for the controller to answer a tool call
INTERRUPT_WAIT = 5.0  # nominal seconds a barging-in caller waits for assistant audio to start (``interrupt_wait``)
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


def is_hold_line(text: str, markers: tuple[str, ...]) -> bool:
    """Whether a line heard on the call is hold music or a recorded announcement (or nothing at all), not a person:
    it contains one of ``markers`` (casefolded, as :attr:`SimContext.hold_markers` keeps them). The rule behind
    the realtime hold check (:meth:`CallRuntime.hold_check_answer`) and the Responses API's ``park_check``."""
    line = text.casefold()
    return not line.strip() or any(marker in line for marker in markers)


#: GA's client events (``input_audio_buffer.append`` is refused on a SIP sideband, see ``on_client_text``)
CLIENT_EVENT_TYPES = [
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
]
#: what ``response.create``'s ``response`` may carry (GA); anything else (beta ``temperature``, ``modalities``,
#: ``voice``, ``max_response_output_tokens``, …) is an unknown parameter
RESPONSE_KEYS = frozenset(
    {
        "audio",
        "conversation",
        "input",
        "instructions",
        "max_output_tokens",
        "metadata",
        "output_modalities",
        "parallel_tool_calls",
        "prompt",
        "reasoning",
        "tool_choice",
        "tools",
    }
)


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
    observers: tuple[WireObserver, ...] = ()

    def observe(self, kind: WireKind, call_id: str | None, name: str, payload: object, **extra: Any) -> None:
        """Show one wire message to the observers (see :mod:`.observe`)."""
        notify(self.observers, WireRecord(kind, call_id, name, payload, **extra), self.task_errors)

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


_event = server_event


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
        #: the caller's turn the next in-band ``response.create`` answers; a call that opens with the caller's
        #: words already heard (``spec.opening``) starts with it, so the controller's greeting answers them
        self._pending_turn: Step | None = record.spec.opening
        self._client_responses: list[ResponseRecord] = []
        self._client_responded = asyncio.Event()
        self._answered_ids: set[str] = set()
        self._tool_call_ids: set[str] = set()
        # the output audio buffer: responses playing or queued, their end-of-playback tasks
        self._playing: dict[str, _Generation] = {}
        self._playback: dict[str, asyncio.Task[None]] = {}
        self._playing_until = 0.0
        self._audio_idle = asyncio.Event()
        self._audio_idle.set()
        self._audio_on = asyncio.Event()  # some assistant audio is playing or queued
        self._active: _Generation | None = None  # the in-band response being generated
        self._usage = UsageMeter()
        self._rates = RateLimitMeter(record.spec.rate_limits)
        self._conversation_id = new_id("conv_", 12)
        self._items: dict[str, dict[str, Any]] = {}  # the default conversation, in order
        self._last_caller_text: str | None = None
        self._last_item_id: str | None = None
        self._caller_speaking = False
        self._last_activity = 0.0
        self._activity = asyncio.Event()
        self._idle_watcher: asyncio.Task[None] | None = None
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
        self._audio_on.clear()
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
        # Reported, not documented: a flat top-level voice gets 200 and then breaks the call; the codec rules
        # (``assess_audio``) are users' reports too.
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
        self.rec.sideband_attached_at.append(self.ctx.now())
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
        if self._idle_watcher is None:
            self._touch()
            self._idle_watcher = self.spawn(self._idle_watch(), "idle-timeout")
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
        self.ctx.observe("server_event", self.rec.call_id, str(event.get("type")), event)
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
        self.ctx.observe("client_event", self.rec.call_id, kind, event)
        raw_id = event.get("event_id")
        client_event_id = raw_id if isinstance(raw_id, str) else None
        handlers: dict[str, Callable[[dict[str, Any], str | None], Awaitable[None]]] = {
            "session.update": self._session_update,
            "conversation.item.create": self._item_create,
            "conversation.item.delete": self._item_delete,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.truncate": self._item_truncate,
            "input_audio_buffer.commit": self._input_commit,
            "input_audio_buffer.clear": self._input_clear,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": self._audio_clear,
        }
        handler = handlers.get(kind)
        if kind == "input_audio_buffer.append":
            # Not modelled: on a SIP call the caller's audio arrives over RTP, and what OpenAI does with audio
            # appended on the sideband is not documented. Refused, so a controller that tries it finds out.
            await self.send_error(
                ApiError(
                    400,
                    "input_audio_buffer.append is not supported on a SIP call's sideband: the caller's audio "
                    "arrives over RTP.",
                    code="invalid_value",
                    param="type",
                ),
                client_event_id,
            )
            return
        if handler is None:
            await self.send_error(invalid_value("type", kind, CLIENT_EVENT_TYPES), client_event_id)
            return
        await handler(event, client_event_id)

    async def on_client_bytes(self) -> None:
        self.rec.client_events.append(ClientEvent(self.ctx.now(), "<invalid>", "<binary frame>"))
        await self.send_error(ApiError(400, "Binary frames are not supported.", code="invalid_json"), None)

    # ---- session.update ------------------------------------------------------------------------

    async def _session_update(self, event: dict[str, Any], eid: str | None) -> None:
        if "session" not in event:
            await self.send_error(missing_parameter("session"), eid)
            return
        patch = event["session"]
        error = validate_session(patch, prefix="session.", reject_vad_tuning=False, session=self._projected)
        if error is None and isinstance(patch, dict) and patch.get("model", self._projected.get("model")) != (
            self._projected.get("model")
        ):
            # OpenAI: "The client may send this event at any time to update any field except for voice and
            # model" (session.update reference). The exact error code is not documented.
            error = ApiError(
                400,
                "Cannot update a session's model after it has started. Start a new session with the other model.",
                code="cannot_update_model",
                param="session.model",
            )
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
        self._activity.set()  # idle_timeout_ms may have changed
        await self.send(_event("session.updated", session=copy.deepcopy(self.rec.session)))

    def _voice_locked(self, patch: Mapping[str, Any]) -> bool:
        voice = (patch.get("audio") or {}).get("output", {}).get("voice")
        current = self._projected.get("audio", {}).get("output", {}).get("voice")
        spoke = any(r.audio_started_at is not None for r in self.rec.responses)
        return voice is not None and voice != current and spoke

    # ---- the conversation ----------------------------------------------------------------------

    async def _add_item(self, item: dict[str, Any], previous: str | None = None) -> None:
        """A finished item joins the conversation: ``conversation.item.added`` then ``.done``."""
        if previous is None:
            previous = self._last_item_id
        self._items[item["id"]] = item
        self._last_item_id = item["id"]
        await self.send(_event("conversation.item.added", previous_item_id=previous, item=copy.deepcopy(item)))
        await self.send(_event("conversation.item.done", previous_item_id=previous, item=copy.deepcopy(item)))

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
        elif kind not in ("message", "function_call"):
            await self.send_error(
                invalid_value("item.type", kind, ["message", "function_call", "function_call_output"]), eid
            )
            return
        previous = event.get("previous_item_id", self._last_item_id)
        if previous is not None and previous != "root" and previous not in self._items:
            await self.send_error(self._item_not_found(previous, "previous_item_id"), eid)
            return
        item_id = item.get("id") if isinstance(item.get("id"), str) else new_id("item_", 12)
        if item_id in self._items:
            await self.send_error(
                ApiError(400, f"Item with id '{item_id}' already exists.", code="item_id_conflict", param="item.id"),
                eid,
            )
            return
        if kind == "function_call_output":
            self.rec.function_outputs.append({"call_id": item["call_id"], "output": item["output"]})
            self._usage.tool_output(item["output"])
        created = {"id": item_id, **{k: v for k, v in item.items() if k not in ("id", "object")}}
        created.setdefault("status", "completed")
        await self._add_item(created, None if previous == "root" else previous)

    def _item_not_found(self, item_id: object, param: str = "item_id") -> ApiError:
        return ApiError(400, f"Item with item_id '{item_id}' not found.", code="item_not_found", param=param)

    async def _item_delete(self, event: dict[str, Any], eid: str | None) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str) or not item_id:
            await self.send_error(missing_parameter("item_id"), eid)
            return
        if self._items.pop(item_id, None) is None:
            await self.send_error(self._item_not_found(item_id), eid)
            return
        self._usage.forget(item_id)
        if self._last_item_id == item_id:
            self._last_item_id = next(reversed(self._items), None)
        await self.send(_event("conversation.item.deleted", item_id=item_id))

    async def _item_retrieve(self, event: dict[str, Any], eid: str | None) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str) or not item_id:
            await self.send_error(missing_parameter("item_id"), eid)
            return
        item = self._items.get(item_id)
        if item is None:
            await self.send_error(self._item_not_found(item_id), eid)
            return
        await self.send(_event("conversation.item.retrieved", item=copy.deepcopy(item)))

    async def _item_truncate(self, event: dict[str, Any], eid: str | None) -> None:
        """``conversation.item.truncate``: cut an assistant audio message at ``audio_end_ms`` (what was heard)."""
        for key in ("item_id", "content_index", "audio_end_ms"):
            if key not in event:
                await self.send_error(missing_parameter(key), eid)
                return
        item_id, index, end_ms = event["item_id"], event["content_index"], event["audio_end_ms"]
        for key, value in (("content_index", index), ("audio_end_ms", end_ms)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                await self.send_error(invalid_type(key, "a non-negative integer", value), eid)
                return
        item = self._items.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            await self.send_error(self._item_not_found(item_id), eid)
            return
        content = item.get("content") or []
        part = content[index] if item.get("role") == "assistant" and index < len(content) else None
        if part is None or part.get("type") != "output_audio":
            await self.send_error(
                ApiError(
                    400,
                    f"Item '{item_id}' has no assistant audio at content_index {index}.",
                    code="invalid_value",
                    param="content_index",
                ),
                eid,
            )
            return
        length_ms = round(assistant_seconds(str(part.get("transcript") or "")) * 1000)
        if end_ms > length_ms:
            await self.send_error(
                ApiError(
                    400,
                    f"Audio content of {length_ms}ms is shorter than {end_ms}ms.",
                    code="invalid_value",
                    param="audio_end_ms",
                ),
                eid,
            )
            return
        part["transcript"] = None  # OpenAI drops the text transcript, so no unheard text stays in the context
        await self.send(
            _event("conversation.item.truncated", item_id=item_id, content_index=index, audio_end_ms=end_ms)
        )

    async def _input_commit(self, event: dict[str, Any], eid: str | None) -> None:
        """``input_audio_buffer.commit``: the line's audio since the last commit becomes a user item. A SIP line
        always carries audio (silence included), so the buffer is never empty here."""
        await self._commit_input(new_id("item_", 12), transcript="")

    async def _input_clear(self, event: dict[str, Any], eid: str | None) -> None:
        await self.send(_event("input_audio_buffer.cleared"))

    async def _commit_input(self, item_id: str, *, transcript: str, seconds: float = 0.0) -> None:
        """The input buffer is committed as ``item_id``: ``committed``, the user item, and (when the session
        transcribes) the transcription. Without transcription OpenAI sends no transcript event at all."""
        previous = self._last_item_id
        await self.send(_event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id))
        await self._add_item(user_audio(item_id, None), previous)
        usage = transcription_usage(self.rec.session, transcript, seconds)
        if usage is None:
            return
        self._items[item_id]["content"][0]["transcript"] = transcript
        where = {"item_id": item_id, "content_index": 0}
        if transcript:
            await self.send(_event("conversation.item.input_audio_transcription.delta", **where, delta=transcript))
        await self.send(
            _event("conversation.item.input_audio_transcription.completed", **where, transcript=transcript, usage=usage)
        )

    # ---- responses -----------------------------------------------------------------------------

    async def _response_create(self, event: dict[str, Any], eid: str | None) -> None:
        options = event.get("response", {})
        if not isinstance(options, dict):
            await self.send_error(invalid_type("response", "an object", options), eid)
            return
        error = validate_response_options(options)
        if error is not None:
            await self.send_error(error, eid)
            return
        modalities = options.get("output_modalities")
        metadata = options.get("metadata")
        if self.is_ended:
            return
        instructions = options.get("instructions")
        limit = options.get("max_output_tokens")
        if options.get("conversation") == "none":
            # Out of band: answers a question about the call, does not take the caller's turn or a queued line.
            prompt = instructions if isinstance(instructions, str) else ""
            await self._respond_out_of_band(prompt, modalities=modalities, metadata=metadata)
            return
        active = self._active
        if active is not None:
            await self.send_error(
                ApiError(
                    400,
                    f"Conversation already has an active response in progress: {active.response.id}. Wait until "
                    "the response is finished before creating a new one.",
                    code="conversation_already_has_active_response",
                ),
                eid,
            )
            return
        turn, self._pending_turn = self._pending_turn, None
        if turn is not None:
            response = await self._respond(
                "client",
                text=turn.reply,
                tool=turn.tool,
                then=turn.then,
                modalities=modalities,
                metadata=metadata,
                max_output_tokens=limit,
            )
            if response.status == "failed" and self._pending_turn is None:
                self._pending_turn = turn  # nothing was said: the caller's turn is still unanswered
            return
        from_queue = bool(self._then)
        if self._then:
            text = self._then.popleft()
        elif isinstance(instructions, str) and instructions.strip():
            text = spoken_line(instructions)
        else:
            text = "Okay."
        response = await self._respond(
            "client", text=text, modalities=modalities, metadata=metadata, max_output_tokens=limit
        )
        if response.status == "failed" and from_queue:
            self._then.appendleft(text)  # the line was never said: the next response.create says it

    async def _response_cancel(self, event: dict[str, Any], eid: str | None) -> None:
        wanted = event.get("response_id")
        active = self._active
        if active is None or (wanted is not None and wanted != active.response.id):
            await self.send_error(
                ApiError(
                    400, "Cancellation failed: no active response found.", code="response_cancel_not_active"
                ),
                eid,
            )
            return
        active.cancel("client_cancelled")

    async def _audio_clear(self, event: dict[str, Any], eid: str | None) -> None:
        for gen in self._cut_audio():
            await self.send(_event("output_audio_buffer.cleared", response_id=gen.response.id))

    def _cut_audio(self) -> list[_Generation]:
        """Empty the output audio buffer: every response playing or queued is cut (``audio_cleared``)."""
        now = self.ctx.now()
        cut = list(self._playing.values())
        for gen in cut:
            task = self._playback.pop(gen.response.id, None)
            if task is not None:
                task.cancel()
            gen.response.audio_cleared = True
            gen.response.audio_stopped_at = now
        self._playing.clear()
        self._playing_until = now
        self._audio_idle.set()
        self._audio_on.clear()
        if cut:
            self.rec.last_audio_stopped_at = now
        self._touch()
        return cut

    # ---- the model -----------------------------------------------------------------------------

    def _response_base(
        self, response_id: str, modalities: list[str], metadata: dict[str, Any] | None, *, in_conversation: bool
    ) -> dict[str, Any]:
        """The response object's fixed fields, as ``response.created`` and ``response.done`` carry them."""
        session = self.rec.session
        base: dict[str, Any] = {
            "object": "realtime.response",
            "id": response_id,
            # the default conversation's id; null for an out-of-band response (conversation: "none")
            "conversation_id": self._conversation_id if in_conversation else None,
            "output_modalities": modalities,
            "max_output_tokens": session.get("max_output_tokens", "inf"),
        }
        if "audio" in modalities:
            output = (session.get("audio") or {}).get("output") or {}
            audio: dict[str, Any] = {}
            if isinstance(output.get("format"), dict):
                audio["format"] = copy.deepcopy(output["format"])
            if isinstance(output.get("voice"), str):
                audio["voice"] = output["voice"]
            base["audio"] = {"output": audio}
        base["metadata"] = metadata
        return base

    async def _respond(
        self,
        source: ResponseSource,
        *,
        text: str | None = None,
        tool: ToolCall | None = None,
        then: str | None = None,
        modalities: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        max_output_tokens: object = None,
    ) -> ResponseRecord:
        """One in-band response: created, rate limits, then the output (streamed over ``response_time``), done.

        Returns once the response is done, or, when it takes time to generate (``response_time``), once it is
        under way (it can be cancelled meanwhile)."""
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
        failure = self.faults.response_failure(source, text or (tool.name if tool else ""), self.ctx.now())
        base = self._response_base(response.id, out_modalities, metadata, in_conversation=True)
        line = text or ""
        if failure is None and kind != "tool":
            limit = max_output_tokens if max_output_tokens is not None else session.get("max_output_tokens")
            line, cut = within_output_limit(line, limit, audio=kind == "audio")
            if cut:
                failure = ResponseFailure(status="incomplete", reason="max_output_tokens")
        elif failure is not None and failure.status == "incomplete":
            line = half_of(line)
        gen = _Generation(
            response=response,
            base=base,
            text=line,
            tool=tool,
            audio=kind == "audio",
            plays=kind == "audio" and self.rec.audio_state != "broken" and not self._silenced,
            incomplete=failure.detail if failure is not None and failure.status == "incomplete" else None,
        )
        await self.send(
            _event(
                "response.created",
                response={**base, "status": "in_progress", "status_details": None, "output": [], "usage": None},
            )
        )
        gen.reserved = min(4096, 200 + text_tokens(line) + round(assistant_seconds(line) * 20))
        await self.send(_event("rate_limits.updated", rate_limits=self._rates.start(gen.reserved)))
        self._touch()
        if failure is not None and failure.status == "failed":
            response.status = "failed"
            response.status_detail = failure.detail
            self._rates.settle(gen.reserved, 0)
            done = {
                **base,
                "status": "failed",
                "status_details": status_details("failed", failure.detail),
                "output": [],
                "usage": zero_usage(),
            }
            await self.send(_event("response.done", response=done))
            self._answered(response)
            return response
        if tool is not None and then is not None:
            self._then.append(then)
        self._active = gen
        if self.spec.response_time > 0:
            self.spawn(self._generate(gen), "generate")
        else:
            await self._generate(gen)
        return response

    async def _generate(self, gen: _Generation) -> None:
        """Stream one response's output, then finish it (``response.done``), however it ends."""
        item_id = gen.item_id = new_id("item_", 12)
        steps = max(1, len(text_chunks(gen.text)) if gen.tool is None else len(char_chunks(gen.arguments)))
        gen.step_s = self.ctx.scaled(self.spec.response_time) / steps
        try:
            if gen.tool is not None:
                await self._generate_call(gen, item_id)
            else:
                await self._generate_message(gen, item_id)
        finally:
            if self._active is gen:
                self._active = None
        status = "cancelled" if gen.cancel_reason else ("incomplete" if gen.incomplete else "completed")
        detail = gen.cancel_reason or gen.incomplete
        gen.response.status = status
        gen.response.status_detail = detail
        out_text = gen.said if gen.tool is None else gen.arguments_sent
        heard_s = assistant_seconds(gen.said) if gen.audio else 0.0
        usage = self._usage.bill(self.rec.session, out_text=out_text, out_audio_seconds=heard_s)
        self._rates.settle(gen.reserved, int(usage["total_tokens"]))
        done = {
            **gen.base,
            "status": status,
            "status_details": status_details(status, detail),
            "output": [copy.deepcopy(self._items.get(item_id, gen.item))],
            "usage": usage,
        }
        await self.send(_event("response.done", response=done))
        gen.finished.set()
        self._answered(gen.response)
        self._touch()

    def _answered(self, response: ResponseRecord) -> None:
        """The controller's ``response.create`` has been answered: its audio is playing, or it is done. (The
        caller's script waits for this, e.g. to listen to the greeting.)"""
        if response.source == "client":
            self._answered_ids.add(response.id)
            self._client_responded.set()

    async def _generate_message(self, gen: _Generation, item_id: str) -> None:
        rid = gen.response.id
        where = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
        gen.item = assistant_message(item_id, "in_progress", [])
        await self.send(
            _event("response.output_item.added", response_id=rid, output_index=0, item=as_output_item(gen.item))
        )
        previous, self._last_item_id = self._last_item_id, item_id
        self._items[item_id] = gen.item
        await self.send(_event("conversation.item.added", previous_item_id=previous, item=copy.deepcopy(gen.item)))
        await self.send(_event("response.content_part.added", **where, part=streamed_part(gen.audio, "")))
        if gen.plays and not gen.cancel_reason:
            await self._start_audio(gen, assistant_seconds(gen.text))
        self._answered(gen.response)
        delta_kind = "response.output_audio_transcript.delta" if gen.audio else "response.output_text.delta"
        for chunk in text_chunks(gen.text):
            if not await gen.step():
                break
            gen.said += chunk
            if chunk:
                await self.send(_event(delta_kind, **where, delta=chunk))
        said = gen.said.strip() if gen.cancel_reason else gen.said
        gen.said = said
        if gen.cancel_reason == "client_cancelled" and gen.plays:
            self._shorten_audio(gen, assistant_seconds(said) if said else 0.0)
        if gen.audio:
            await self.send(_event("response.output_audio_transcript.done", **where, transcript=said))
        else:
            await self.send(_event("response.output_text.done", **where, text=said))
        await self.send(_event("response.content_part.done", **where, part=streamed_part(gen.audio, said)))
        status: ItemStatus = "incomplete" if gen.cancel_reason or gen.incomplete else "completed"
        gen.item = assistant_message(item_id, status, [output_content(gen.audio, said)])
        self._items[item_id] = gen.item
        await self.send(
            _event("response.output_item.done", response_id=rid, output_index=0, item=as_output_item(gen.item))
        )
        await self.send(_event("conversation.item.done", previous_item_id=previous, item=copy.deepcopy(gen.item)))
        if said:
            self.rec.transcripts.append({"role": "assistant", "text": said, "t": self.ctx.now(), "response_id": rid})
        gen.response.transcript = said

    async def _generate_call(self, gen: _Generation, item_id: str) -> None:
        """A function call: added, argument deltas, arguments done, output item done (OpenAI's order)."""
        assert gen.tool is not None
        rid = gen.response.id
        call_id = gen.response.tool_call_id = new_id("call_", 8)
        self._tool_call_ids.add(call_id)
        name = gen.tool.name
        gen.item = function_call(item_id, call_id, name, "", "in_progress")
        await self.send(
            _event("response.output_item.added", response_id=rid, output_index=0, item=as_output_item(gen.item))
        )
        previous, self._last_item_id = self._last_item_id, item_id
        self._items[item_id] = gen.item
        await self.send(_event("conversation.item.added", previous_item_id=previous, item=copy.deepcopy(gen.item)))
        where = {"response_id": rid, "item_id": item_id, "output_index": 0, "call_id": call_id}
        for chunk in char_chunks(gen.arguments):
            if not await gen.step():
                break
            gen.arguments_sent += chunk
            if chunk:
                await self.send(_event("response.function_call_arguments.delta", **where, delta=chunk))
        arguments = gen.arguments_sent
        await self.send(_event("response.function_call_arguments.done", **where, name=name, arguments=arguments))
        status: ItemStatus = "incomplete" if gen.cancel_reason or gen.incomplete else "completed"
        gen.item = function_call(item_id, call_id, name, arguments, status)
        self._items[item_id] = gen.item
        await self.send(
            _event("response.output_item.done", response_id=rid, output_index=0, item=as_output_item(gen.item))
        )
        await self.send(_event("conversation.item.done", previous_item_id=previous, item=copy.deepcopy(gen.item)))

    def hold_check_answer(self) -> str:
        """What the scripted model answers to "is a person speaking?": "no" while the latest caller transcript
        is hold music or an announcement (one of the hold markers), "yes" otherwise."""
        return "no" if is_hold_line(self._last_caller_text or "", self.ctx.hold_markers) else "yes"

    async def _respond_out_of_band(
        self, prompt: str, *, modalities: list[str] | None, metadata: dict[str, Any] | None
    ) -> ResponseRecord:
        """``conversation: "none"``: a text-only answer (the scripted model treats every out-of-band question
        as a hold check): the output item streams as usual, but nothing joins the conversation (no
        ``conversation.item.*``), ``conversation_id`` is null, and no transcript is recorded."""
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
        rid = response.id
        base = self._response_base(rid, out_modalities, metadata, in_conversation=False)
        await self.send(
            _event(
                "response.created",
                response={**base, "status": "in_progress", "status_details": None, "output": [], "usage": None},
            )
        )
        await self.send(_event("rate_limits.updated", rate_limits=self._rates.start(64)))
        item_id = new_id("item_", 12)
        where = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
        item = assistant_message(item_id, "in_progress", [])
        added = as_output_item(item)
        await self.send(_event("response.output_item.added", response_id=rid, output_index=0, item=added))
        await self.send(_event("response.content_part.added", **where, part=streamed_part(False, "")))
        await self.send(_event("response.output_text.delta", **where, delta=text))
        await self.send(_event("response.output_text.done", **where, text=text))
        await self.send(_event("response.content_part.done", **where, part=streamed_part(False, text)))
        item = assistant_message(item_id, "completed", [output_content(False, text)])
        finished = as_output_item(item)
        await self.send(_event("response.output_item.done", response_id=rid, output_index=0, item=finished))
        usage = self._usage.bill_out_of_band(prompt=prompt, out_text=text)
        self._rates.settle(64, int(usage["total_tokens"]))
        await self.send(
            _event(
                "response.done",
                response={**base, "status": "completed", "status_details": None, "output": [item], "usage": usage},
            )
        )
        return response

    # ---- the output audio buffer ---------------------------------------------------------------

    async def _start_audio(self, gen: _Generation, seconds: float) -> None:
        """Queue a response's audio in the one output buffer: it is heard after what is already playing."""
        now = self.ctx.now()
        starts_at = max(now, self._playing_until)
        gen.ends_at = starts_at + self.ctx.scaled(seconds)
        self._playing_until = gen.ends_at
        self._playing[gen.response.id] = gen
        self._audio_idle.clear()
        if starts_at <= now:
            await self._audio_started(gen)
        else:
            self.spawn(self._start_audio_later(gen, starts_at), "playback-start")
        self._playback[gen.response.id] = self.spawn(self._finish_audio(gen), "playback")

    async def _audio_started(self, gen: _Generation) -> None:
        gen.response.audio_started_at = self.ctx.now()
        self._audio_on.set()
        self._touch()
        await self.send(_event("output_audio_buffer.started", response_id=gen.response.id))

    async def _start_audio_later(self, gen: _Generation, starts_at: float) -> None:
        await asyncio.sleep(max(0.0, starts_at - self.ctx.now()))
        if gen.response.id in self._playing and not self.is_ended:  # not cleared meanwhile
            await self._audio_started(gen)

    def _shorten_audio(self, gen: _Generation, seconds: float) -> None:
        """A cancelled response: only what was generated plays (and what is queued after it moves up)."""
        if gen.response.id not in self._playing:
            return
        start = gen.response.audio_started_at if gen.response.audio_started_at is not None else self.ctx.now()
        ends_at = min(gen.ends_at, max(self.ctx.now(), start + self.ctx.scaled(seconds)))
        if self._playing_until == gen.ends_at:
            self._playing_until = ends_at
        gen.ends_at = ends_at
        task = self._playback.pop(gen.response.id, None)
        if task is not None:
            task.cancel()
        self._playback[gen.response.id] = self.spawn(self._finish_audio(gen), "playback")

    async def _finish_audio(self, gen: _Generation) -> None:
        """The response's audio has played to its end: ``output_audio_buffer.stopped``, never before its
        ``response.done`` (OpenAI: stopped comes after the full response data has been sent)."""
        await asyncio.sleep(max(0.0, gen.ends_at - self.ctx.now()))
        await gen.finished.wait()
        response = gen.response
        if response.id not in self._playing:
            return
        now = self.ctx.now()
        self._playing.pop(response.id, None)
        self._playback.pop(response.id, None)
        response.audio_stopped_at = now
        self.rec.last_audio_stopped_at = now
        await self.send(_event("output_audio_buffer.stopped", response_id=response.id))
        # Only now may the caller speak again, so ``stopped`` always precedes the next caller event.
        if not self._playing:
            self._audio_on.clear()
            self._audio_idle.set()
        self._touch()

    # ---- barge-in, idle timeout, the session limit ---------------------------------------------

    def _interrupts(self) -> bool:
        """Whether caller speech now cuts the assistant off (server VAD's ``interrupt_response``, default on)."""
        turn = (self.rec.session.get("audio") or {}).get("input", {}).get("turn_detection")
        if not isinstance(turn, dict) or turn.get("interrupt_response") is False:
            return False
        return bool(self._playing) or self._active is not None

    async def _barge_in(self) -> None:
        """The caller spoke over the assistant: a response still being generated is cancelled
        (``turn_detected``, its message ends ``incomplete``); the output buffer is cleared
        (``output_audio_buffer.cleared`` for each response whose audio was cut) and each finished message that
        was cut is truncated to what was heard (``conversation.item.truncated``)."""
        self.rec.barge_ins += 1
        active = self._active
        if active is not None:
            active.cancel("turn_detected")
        now = self.ctx.now()
        for gen in self._cut_audio():
            await self.send(_event("output_audio_buffer.cleared", response_id=gen.response.id))
            started = gen.response.audio_started_at
            heard = 0 if started is None else max(0, round((now - started) / self.ctx.time_scale * 1000))
            item = self._items.get(gen.item_id)
            if item is not None and item.get("content"):
                heard = min(heard, round(assistant_seconds(gen.text) * 1000))
                item["content"][0]["transcript"] = None
                await self.send(
                    _event("conversation.item.truncated", item_id=gen.item_id, content_index=0, audio_end_ms=heard)
                )

    def _touch(self) -> None:
        """Something happened on the line (speech, audio, a response): the idle clock starts again."""
        self._last_activity = asyncio.get_running_loop().time()
        self._activity.set()

    def _idle_timeout_s(self) -> float | None:
        turn = (self.rec.session.get("audio") or {}).get("input", {}).get("turn_detection")
        if not isinstance(turn, dict) or turn.get("type") != "server_vad":
            return None
        idle = turn.get("idle_timeout_ms")
        return idle / 1000 if isinstance(idle, int | float) and not isinstance(idle, bool) else None

    async def _idle_watch(self) -> None:
        """Server VAD's ``idle_timeout_ms``: that long with no caller speech after the assistant's audio (and
        nothing playing or being generated), OpenAI sends ``input_audio_buffer.timeout_triggered``, commits the
        silence and answers it (a re-prompt). It never hangs up."""
        loop = asyncio.get_running_loop()
        while not self.is_ended:
            self._activity.clear()
            timeout = self._idle_timeout_s()
            if timeout is None or self._playing or self._active is not None or self._caller_speaking:
                await self._activity.wait()
                continue
            remaining = self._last_activity + self.ctx.scaled(timeout) - loop.time()
            if remaining > 0:
                await _wait(self._activity, remaining)
                continue
            await self._idle_timeout(timeout)

    async def _idle_timeout(self, timeout: float) -> None:
        self.rec.idle_timeouts += 1
        item_id = new_id("item_", 12)
        end_ms = self._line_ms()
        start_ms = max(0, end_ms - round(timeout * 1000))
        timed_out = {"audio_start_ms": start_ms, "audio_end_ms": end_ms, "item_id": item_id}
        await self.send(_event("input_audio_buffer.timeout_triggered", **timed_out))
        self._touch()
        await self._commit_input(item_id, transcript="")
        if auto_response_enabled(self.rec.session):
            await self._respond("auto", text=self.spec.idle_reply)

    def _line_ms(self) -> int:
        """Milliseconds of line audio since the call was answered: the input buffer's clock."""
        accepted = self.rec.accepted_at if self.rec.accepted_at is not None else self.ctx.now()
        return max(0, round((self.ctx.now() - accepted) / self.ctx.time_scale * 1000))

    async def _session_limit(self) -> None:
        """OpenAI ends a session after 60 minutes (``session_limit``): an ``error`` event, then the call ends.
        The event's code and message are as users report them."""
        accepted = self.rec.accepted_at if self.rec.accepted_at is not None else self.ctx.now()
        await asyncio.sleep(max(0.0, accepted + self.ctx.scaled(self.spec.session_limit) - self.ctx.now()))
        minutes = round(self.spec.session_limit / 60)
        await self.send_error(
            ApiError(
                400,
                f"Your session hit the maximum duration of {minutes} minutes.",
                code="session_expired",
            ),
            None,
        )
        await self.end("session_limit")

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
        self.spawn(self._session_limit(), "session-limit")
        try:
            async with asyncio.timeout(scaled(spec.max_call_seconds)):
                await self.attached.wait()
                await self._greeting()
                for index, step in enumerate(spec.steps):
                    if step.interrupt is not None:
                        # barge in: speak into the assistant's audio instead of waiting for it to end
                        patience = INTERRUPT_WAIT if step.interrupt_wait is None else step.interrupt_wait
                        await _wait(self._audio_on, scaled(patience))
                        await asyncio.sleep(scaled(step.interrupt))
                    else:
                        await self._audio_idle.wait()
                    await self._socket_up.wait()  # a dropped sideband: wait for the reconnect
                    if self.is_ended:
                        return
                    rec = self.rec
                    rec.step_index, rec.step_started_at, rec.step_chunks = index, self.ctx.now(), 0
                    await self._step(step)
                    rec.steps_done = index + 1
                await self.rec.ended.wait()
        except TimeoutError:
            self.rec.max_call_reached = not self.is_ended
        await self.end("caller")

    async def _greeting(self) -> None:
        """Wait for the controller's greeting and listen to it. A greeting that failed is no greeting: the caller
        waits (``greeting_wait`` again) for the controller to ask once more."""
        while True:
            if not await _wait(self._client_responded, self.ctx.scaled(self.spec.greeting_wait)):
                return
            self._client_responded.clear()
            answered = [r for r in self._client_responses if r.id in self._answered_ids]
            greeting = next((r for r in answered if r.status != "failed"), None)
            if greeting is not None:
                break
        if greeting.audio_started_at is None and greeting.id not in self._playing:
            return  # no audio is coming (text only, failed, or the session cannot speak)
        steps = self.spec.steps
        if steps and steps[0].interrupt is not None:
            return  # the caller barges into the greeting: their first step does not wait for its end
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
                # GA's event has exactly these fields (no event_id): type, event, received_at.
                await self.send(
                    {"type": "input_audio_buffer.dtmf_event_received", "event": digit, "received_at": int(time.time())}
                )
                await asyncio.sleep(self.ctx.scaled(DTMF_GAP))

    async def _caller_says(self, step: Step) -> None:
        text = step.say or ""
        await self._caller_segment(text, caller_seconds(text))
        self.rec.steps_done = self.rec.step_index + 1  # spoken: whatever comes of it, it belongs to the past
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
        not wait for the model: segments come on schedule, whatever is playing. Silent music (no ``text``) makes
        no segments: the line is quiet for ``seconds``."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + self.ctx.scaled(music.seconds)
        for index in range(music.chunks):
            due = start + self.ctx.scaled(index * music.every)
            await asyncio.sleep(max(0.0, due - loop.time()))
            if self.is_ended:
                return
            self.rec.step_chunks = index + 1
            if music.text is None:
                continue
            await self._socket_up.wait()
            await self._caller_segment(music.text, music.segment)
            self.rec.hold_segments += 1
            if auto_response_enabled(self.rec.session):
                await self._respond("auto", text=music.reply)
        await asyncio.sleep(max(0.0, end - loop.time()))

    async def _caller_segment(self, text: str, seconds: float) -> None:
        """The far side speaks (or music plays) for ``seconds``: speech edges (cutting the assistant off when
        server VAD interrupts), the commit and the user item, then the transcription if the session has one."""
        item_id = new_id("item_", 12)
        self._caller_speaking = True
        self._touch()
        await self.send(_event("input_audio_buffer.speech_started", audio_start_ms=self._line_ms(), item_id=item_id))
        if self._interrupts():
            await self._barge_in()
        await asyncio.sleep(self.ctx.scaled(seconds))
        await self.send(_event("input_audio_buffer.speech_stopped", audio_end_ms=self._line_ms(), item_id=item_id))
        self._caller_speaking = False
        self._touch()
        # Recorded before the transcription goes out, so a check the controller sends on it sees this line.
        self._last_caller_text = text
        self.rec.transcripts.append({"role": "caller", "text": text, "t": self.ctx.now()})
        self._usage.caller_spoke(text, seconds, item_id)
        await self._commit_input(item_id, transcript=text, seconds=seconds)


@dataclass
class _Generation:
    """One in-band response while the model makes it (and while its audio plays)."""

    response: ResponseRecord
    base: dict[str, Any]
    text: str
    tool: ToolCall | None
    audio: bool
    plays: bool
    #: the reason an incomplete response stops early (``max_output_tokens``, ``content_filter``)
    incomplete: str | None = None
    item_id: str = ""
    item: dict[str, Any] = field(default_factory=dict)
    said: str = ""
    arguments_sent: str = ""
    cancel_reason: str | None = None
    step_s: float = 0.0
    reserved: int = 0
    ends_at: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def arguments(self) -> str:
        """The call's arguments as the model writes them (cut about half-way when incomplete)."""
        if self.tool is None:
            return ""
        full = json.dumps(self.tool.arguments)
        return full[: max(1, len(full) // 2)] if self.incomplete else full

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None and not self.finished.is_set():
            self.cancel_reason = reason
            self.wake.set()

    async def step(self) -> bool:
        """Generate one piece: wait its share of ``response_time``; False once the response is cancelled."""
        if self.cancel_reason is None and self.step_s > 0:
            await _wait(self.wake, self.step_s)
        return self.cancel_reason is None


def half_of(text: str) -> str:
    """The first half of a line's words (at least one): what an incomplete response got out."""
    words = text.split()
    return " ".join(words[: max(1, len(words) // 2)]) if words else ""


def within_output_limit(text: str, limit: object, *, audio: bool) -> tuple[str, bool]:
    """The line cut to ``max_output_tokens`` (text tokens, plus 20 audio tokens a second when spoken), and
    whether it had to be cut."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        return text, False
    words = text.split()

    def cost(n: int) -> int:
        line = " ".join(words[:n])
        return text_tokens(line) + (round(assistant_seconds(line) * 20) if audio and line else 0)

    if cost(len(words)) <= limit:
        return text, False
    keep = len(words)
    while keep > 0 and cost(keep) > limit:
        keep -= 1
    return " ".join(words[:keep]), True


def validate_response_options(options: Mapping[str, Any]) -> ApiError | None:
    """What OpenAI refuses in ``response.create``'s ``response``: unknown (e.g. beta) fields such as
    ``temperature`` or ``modalities``, bad modalities, metadata that is not up to 16 string pairs."""
    for key in options:
        if key not in RESPONSE_KEYS:
            return unknown_parameter(f"response.{key}")
    modalities = options.get("output_modalities")
    if modalities is not None and (
        not isinstance(modalities, list) or len(modalities) != 1 or modalities[0] not in ("audio", "text")
    ):
        return invalid_value("response.output_modalities", modalities, ["audio", "text"])
    conversation = options.get("conversation")
    if conversation is not None and conversation not in ("auto", "none"):
        return invalid_value("response.conversation", conversation, ["auto", "none"])
    metadata = options.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            return invalid_type("response.metadata", "an object", metadata)
        if len(metadata) > 16:
            return ApiError(
                400,
                "Invalid 'response.metadata': too many properties (at most 16).",
                code="object_above_max_properties",
                param="response.metadata",
            )
        for key, value in metadata.items():
            if len(key) > 64:
                return ApiError(
                    400,
                    f"Invalid 'response.metadata': key {key[:20]!r}… is longer than 64 characters.",
                    code="invalid_value",
                    param="response.metadata",
                )
            if not isinstance(value, str):
                return invalid_type(f"response.metadata.{key}", "a string", value)
            if len(value) > 512:
                return ApiError(
                    400,
                    f"Invalid 'response.metadata.{key}': string too long (at most 512 characters).",
                    code="string_above_max_length",
                    param=f"response.metadata.{key}",
                )
    limit = options.get("max_output_tokens")
    whole = isinstance(limit, int) and not isinstance(limit, bool)
    if limit is not None and limit != "inf" and not (whole and 1 <= limit <= 4096):
        return invalid_value("response.max_output_tokens", limit)
    return None
