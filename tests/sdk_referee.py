"""The SDK referee: OpenAI's own ``openai`` package judges both sides of the simulator's wire.

While a test of the scenario and end-to-end suites runs (``tests/simulator``, ``tests/e2e``; their conftests
switch it on), every message on every simulator's wire goes through :class:`SdkReferee`
(``sip_controller.simulator.observe``):

- every **server event** the simulator sends is parsed with the SDK's server-event union
  (``openai.types.realtime.RealtimeServerEvent``, looked up by its ``type``) in strict mode, and must carry no
  field the SDK's models do not declare, except the ones in :data:`DOCUMENTED_BEYOND_SDK` (fields OpenAI's own
  documentation shows and the SDK lags behind on, each with its source);
- every **client event** the controller sends is parsed with the SDK's client-event union
  (``RealtimeClientEvent``) the same way, and every **REST body** with the SDK's params types
  (``call_accept_params.CallAcceptParams``, ``call_reject_params.CallRejectParams``,
  ``call_refer_params.CallReferParams``; ``/hangup`` takes none);
- every **webhook** the simulator signs must pass the SDK's own ``client.webhooks.unwrap(...)`` with the
  simulator's secret and parse as ``RealtimeCallIncomingWebhookEvent``.

A mismatch fails the test that was running, naming the message (``server event response.done (event_…) on
call rtc_…: response.conversation_id: …``). Client-side checks are on in ``tests/e2e`` (the controller is the
client) and off in ``tests/simulator``, whose tests play the client themselves and send bad events on purpose;
there the simulator's answers to those events are what is tested.

Production code never imports ``openai``: this module and the tests are its only users.
"""

from __future__ import annotations

import collections.abc
import contextlib
import copy
import functools
import json
import re
import types
import typing
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

import pydantic
import pytest
from openai import OpenAI
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from openai.types.realtime.call_accept_params import CallAcceptParams
from openai.types.realtime.call_refer_params import CallReferParams
from openai.types.realtime.call_reject_params import CallRejectParams
from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming
from openai.types.webhooks import RealtimeCallIncomingWebhookEvent
from typing_extensions import is_typeddict

from sip_controller.simulator.observe import WireRecord, observing

#: Fields OpenAI's documentation shows on an event and the SDK's models do not declare (yet), by event type and
#: path (``[]`` stands for any list index). Each entry names where OpenAI documents it. Anything else
#: undeclared is a mismatch.
DOCUMENTED_BEYOND_SDK: dict[tuple[str, str], str] = {
    (kind, f"session.{name}"): (
        "OpenAI API reference, Realtime server events, the session.created and session.updated examples "
        "(developers.openai.com/api/reference/realtime-server-events): the session carries "
        '"object": "realtime.session", "id": "sess_…" and "expires_at"; the SDK types the session as '
        "RealtimeSessionCreateRequest, which declares none of the three"
    )
    for kind in ("session.created", "session.updated")
    for name in ("object", "id", "expires_at")
}

#: Nulls OpenAI documents in a request where the SDK's params type has no ``None``, by REST operation and path.
DOCUMENTED_NULLS: dict[tuple[str, str], str] = {
    ("accept", "audio.input.transcription"): (
        "the SDK's own docstring of RealtimeAudioConfigInputParam.transcription (and OpenAI's API reference for "
        "the session's audio.input.transcription): 'defaults to off and can be set to `null` to turn off'; the "
        "params type says AudioTranscriptionParam without Optional, the response model says Optional"
    ),
}

_INDEX = re.compile(r"\[\d+\]")


def _variants(union: object) -> dict[str, type[pydantic.BaseModel]]:
    """``{type literal: model}`` for a discriminated union of the SDK (``Annotated[Union[...], PropertyInfo]``)."""
    (inner, *_meta) = get_args(union)
    out: dict[str, type[pydantic.BaseModel]] = {}
    for model in get_args(inner):
        for literal in get_args(model.model_fields["type"].annotation):
            out[literal] = model
    return out


SERVER_EVENTS = _variants(RealtimeServerEvent)
CLIENT_EVENTS = _variants(RealtimeClientEvent)
REST_BODIES: dict[str, Any] = {
    "accept": CallAcceptParams,
    "reject": CallRejectParams,
    "refer": CallReferParams,
    # the post-call analysis (#17): POST /v1/responses, not streamed
    "responses": ResponseCreateParamsNonStreaming,
}


def undeclared_fields(value: object, path: str = "") -> Iterator[str]:
    """Paths of the fields a parsed SDK model kept as extras (the SDK's models allow them), at any depth."""
    if isinstance(value, pydantic.BaseModel):
        for name in value.model_extra or {}:
            yield f"{path}.{name}" if path else name
        for name in type(value).model_fields:
            yield from undeclared_fields(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from undeclared_fields(item, f"{path}[{i}]")


def _strip(hint: object) -> object:
    """``Required[X]``, ``NotRequired[X]``, ``Annotated[X, ...]`` -> ``X``."""
    while True:
        origin = get_origin(hint)
        if origin is typing.Annotated or getattr(origin, "__name__", "") in ("Required", "NotRequired"):
            hint = get_args(hint)[0]
            continue
        return hint


def undeclared_keys(hint: object, value: object, path: str = "") -> list[str]:
    """Keys of ``value`` (plain JSON) that the SDK's params type ``hint`` (TypedDicts, unions, lists, dicts) does
    not declare. In a union, the members whose ``type`` literal (if any) matches are tried, and the one leaving the
    fewest keys undeclared decides."""
    return _fit(hint, value, path) or []


def _fit(hint: object, value: object, path: str) -> list[str] | None:
    """Undeclared keys of ``value`` under ``hint``; ``None`` when ``hint`` is a TypedDict whose ``type`` literal
    rules ``value`` out (the wrong member of a union)."""
    hint = _strip(hint)
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        fits = [found for member in get_args(hint) if (found := _fit(member, value, path)) is not None]
        return min(fits, key=len) if fits else []
    if is_typeddict(hint):
        if not isinstance(value, Mapping):
            return []
        declared = get_type_hints(hint, include_extras=True)
        literal = get_args(_strip(declared["type"])) if "type" in declared else ()
        if literal and value.get("type") not in literal:
            return None
        out: list[str] = []
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            out.extend([where] if key not in declared else undeclared_keys(declared[key], item, where))
        return out
    if origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence) and isinstance(value, list):
        (item_hint, *_rest) = get_args(hint) or (object,)
        return [k for i, item in enumerate(value) for k in undeclared_keys(item_hint, item, f"{path}[{i}]")]
    if origin in (dict, collections.abc.Mapping) and isinstance(value, Mapping):
        (_key_hint, item_hint) = get_args(hint) or (str, object)
        return [k for key, item in value.items() for k in undeclared_keys(item_hint, item, f"{path}.{key}")]
    if hint in (object, Any, dict):
        return []
    if isinstance(value, Mapping | list):
        return None  # a scalar member of a union cannot be what an object or array was meant as
    return []


def _allowed(kind: str, path: str) -> bool:
    return (kind, _INDEX.sub("[]", path)) in DOCUMENTED_BEYOND_SDK


def _errors(exc: pydantic.ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(event)'}: {err['msg']}" for err in exc.errors()[:5]
    )


def check_server_event(event: object) -> list[str]:
    """Problems the SDK finds with one server event (empty: it is what OpenAI sends)."""
    if not isinstance(event, Mapping) or not isinstance(event.get("type"), str):
        return ["not a JSON object with a string type"]
    kind = event["type"]
    model = SERVER_EVENTS.get(kind)
    if model is None:
        return [f"{kind!r} is not a server event of the SDK's RealtimeServerEvent union"]
    return _check_model(model, event, kind)


def check_client_event(event: object, allow: frozenset[str] = frozenset()) -> list[str]:
    """Problems the SDK finds with one client event (``allow``: undeclared paths a test sends on purpose)."""
    if not isinstance(event, Mapping) or not isinstance(event.get("type"), str):
        return ["not a JSON object with a string type"]
    kind = event["type"]
    model = CLIENT_EVENTS.get(kind)
    if model is None:
        return [f"{kind!r} is not a client event of the SDK's RealtimeClientEvent union"]
    return _check_model(model, event, kind, allow)


def _check_model(
    model: type[pydantic.BaseModel], data: Mapping[str, Any], kind: str, allow: frozenset[str] = frozenset()
) -> list[str]:
    try:
        parsed = model.model_validate(data, strict=True)
    except pydantic.ValidationError as exc:
        return [f"refused by {model.__name__}: {_errors(exc)}"]
    extra = [p for p in undeclared_fields(parsed) if not _allowed(kind, p) and p not in allow]
    return [f"{p}: not declared by {model.__name__}" for p in extra]


def check_rest_body(operation: str, body: object, allow: frozenset[str] = frozenset()) -> list[str]:
    """Problems the SDK's params types find with one REST request body (``None``: no body; ``allow``: undeclared
    paths a test sends on purpose)."""
    if operation == "hangup":
        return [] if body is None else ["/hangup takes no body"]
    hint = REST_BODIES.get(operation)
    if hint is None:
        return [f"{operation!r} is not a SIP call operation of the SDK"]
    if body is None:
        return [] if operation == "reject" else [f"/{operation} needs a body"]
    body = _without_documented_nulls(operation, body)
    try:
        pydantic.TypeAdapter[Any](hint).validate_python(body, strict=True)
    except pydantic.ValidationError as exc:
        return [f"refused by {getattr(hint, '__name__', hint)}: {_errors(exc)}"]
    name = getattr(hint, "__name__", str(hint))
    return [f"{p}: not declared by {name}" for p in undeclared_keys(hint, body) if p not in allow]


def _without_documented_nulls(operation: str, body: object) -> object:
    """A copy of ``body`` without the nulls in :data:`DOCUMENTED_NULLS` (the SDK's types would refuse them)."""
    body = copy.deepcopy(body)
    for (op, path), _source in DOCUMENTED_NULLS.items():
        *parents, last = path.split(".")
        node = body
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if op == operation and isinstance(node, dict) and last in node and node[last] is None:
            del node[last]
    return body


@functools.cache
def _client() -> OpenAI:
    """One SDK client for the whole run (building one takes tens of milliseconds); it never sends a request."""
    return OpenAI(api_key="sk-referee", base_url="http://127.0.0.1:9/v1")


def check_webhook(body: str, headers: Mapping[str, str], secret: str) -> list[str]:
    """The SDK's ``client.webhooks.unwrap`` must verify and parse the delivery."""
    try:
        unwrapped = _client().webhooks.unwrap(body, dict(headers), secret=secret)
    except Exception as exc:  # InvalidWebhookSignatureError, a malformed header, bad JSON
        return [f"client.webhooks.unwrap refused it: {type(exc).__name__}: {exc}"]
    if not isinstance(unwrapped, RealtimeCallIncomingWebhookEvent):
        return [f"unwrap gave {type(unwrapped).__name__}, not RealtimeCallIncomingWebhookEvent"]
    return _check_model(RealtimeCallIncomingWebhookEvent, json.loads(body), "realtime.call.incoming")


_REFERENCE = "OpenAI API reference, Realtime server events"


@dataclass
class _ResponseStream:
    in_conversation: bool
    done: bool = False
    audio_part: bool = False
    added: dict[str, str] = field(default_factory=dict)  # item id -> item type, from response.output_item.added
    finished: set[str] = field(default_factory=set)  # response.output_item.done
    arguments_done: set[str] = field(default_factory=set)


@dataclass
class StreamChecker:
    """The order OpenAI documents for one call's server events, which a per-event schema cannot see:

    - a response's events come between its ``response.created`` and ``response.done``; an item's events after
      its ``response.output_item.added``; ``response.function_call_arguments.done`` before the call's
      ``response.output_item.done`` (the reference: output_item.done is "returned when an Item is done
      streaming");
    - every item ``response.done`` lists was streamed (``output_item.added`` and ``.done``), and, in the default
      conversation, added to it (``conversation.item.added`` and ``.done``), with a ``conv_…``
      ``conversation_id`` (the SDK's ``RealtimeResponse.conversation_id`` docs: null only for
      ``conversation: "none"``);
    - ``output_audio_buffer.started`` after an audio ``response.content_part.added`` of its response, and
      ``output_audio_buffer.stopped`` after its ``response.done`` (the reference's words for both);
    - a response that did not complete says why (``status_details.type`` equal to its status; the SDK's
      ``RealtimeResponseStatus`` docs);
    - no beta-era ``conversation.item.created``: GA sends ``conversation.item.added`` then
      ``conversation.item.done`` (the reference's conversation.item.added).
    """

    responses: dict[str, _ResponseStream] = field(default_factory=dict)
    in_conversation: set[str] = field(default_factory=set)
    finished_in_conversation: set[str] = field(default_factory=set)

    def check(self, event: Mapping[str, Any]) -> list[str]:
        kind = str(event.get("type"))
        if kind == "conversation.item.created":
            return [f"beta-era event: GA sends conversation.item.added then conversation.item.done ({_REFERENCE})"]
        if kind in ("conversation.item.added", "conversation.item.done"):
            item = event.get("item")
            item_id = item.get("id") if isinstance(item, Mapping) else None
            (self.in_conversation if kind.endswith("added") else self.finished_in_conversation).add(str(item_id))
            return []
        if kind in ("response.created", "response.done"):
            response = event.get("response")
            return self._response(kind, response) if isinstance(response, Mapping) else []
        rid = event.get("response_id")
        if not isinstance(rid, str):
            return []
        stream = self.responses.get(rid)
        if kind.startswith("output_audio_buffer."):
            if stream is None:
                return [f"{kind} for response {rid}, which was never created"]
            if kind.endswith("started") and not stream.audio_part:
                where = f"{_REFERENCE}, output_audio_buffer.started"
                return [f"before an audio response.content_part.added of {rid} ({where})"]
            if kind.endswith("stopped") and not stream.done:
                return [f"before response.done of {rid} ({_REFERENCE}, output_audio_buffer.stopped)"]
            return []
        if stream is None:
            return [f"before response.created of {rid}"]
        if stream.done:
            return [f"after response.done of {rid}"]
        return self._item_event(kind, event, stream)

    def _item_event(self, kind: str, event: Mapping[str, Any], stream: _ResponseStream) -> list[str]:
        item = event.get("item")
        item_id = item.get("id") if isinstance(item, Mapping) else event.get("item_id")
        if kind == "response.output_item.added":
            stream.added[str(item_id)] = str(item.get("type")) if isinstance(item, Mapping) else ""
            return []
        if str(item_id) not in stream.added:
            return [f"before response.output_item.added of item {item_id}"]
        if kind == "response.content_part.added":
            part = event.get("part")
            stream.audio_part = stream.audio_part or (isinstance(part, Mapping) and part.get("type") == "audio")
        elif kind == "response.function_call_arguments.done":
            stream.arguments_done.add(str(item_id))
        elif kind == "response.output_item.done":
            if stream.added[str(item_id)] == "function_call" and str(item_id) not in stream.arguments_done:
                return [f"before response.function_call_arguments.done of item {item_id}"]
            stream.finished.add(str(item_id))
        return []

    def _response(self, kind: str, response: Mapping[str, Any]) -> list[str]:
        rid = str(response.get("id"))
        if kind == "response.created":
            self.responses[rid] = _ResponseStream(in_conversation=response.get("conversation_id") is not None)
            return []
        stream = self.responses.get(rid)
        if stream is None:
            return [f"response.done of {rid} without its response.created"]
        stream.done = True
        problems: list[str] = []
        status, details = response.get("status"), response.get("status_details")
        if status in ("cancelled", "failed", "incomplete") and (
            not isinstance(details, Mapping) or details.get("type") != status
        ):
            problems.append(f"status {status} without status_details of that type (the SDK's RealtimeResponseStatus)")
        for item in response.get("output") or []:
            item_id = str(item.get("id")) if isinstance(item, Mapping) else "?"
            if item_id not in stream.added or item_id not in stream.finished:
                problems.append(f"output item {item_id} was never streamed (response.output_item.added/done)")
            joined = item_id in self.in_conversation and item_id in self.finished_in_conversation
            if stream.in_conversation and not joined:
                problems.append(f"output item {item_id} never joined the conversation (conversation.item.added/done)")
            if not stream.in_conversation and item_id in self.in_conversation:
                problems.append(
                    f"conversation_id is null, yet item {item_id} joined the default conversation (the SDK's "
                    "RealtimeResponse.conversation_id: null only for conversation: none)"
                )
        return problems


@dataclass
class SdkReferee:
    """A wire observer that collects what the SDK refuses; :meth:`report` says it in one message."""

    check_clients: bool = True
    #: undeclared client-side paths a test sends on purpose (a session trap), e.g. ``temperature``
    allow: frozenset[str] = frozenset()
    problems: list[str] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    streams: dict[str, StreamChecker] = field(default_factory=dict)

    def __call__(self, record: WireRecord) -> None:
        self.seen[record.kind] = self.seen.get(record.kind, 0) + 1
        found: list[str]
        if record.kind == "server_event":
            found = check_server_event(record.payload)
            if isinstance(record.payload, Mapping):
                stream = self.streams.setdefault(record.call_id or "", StreamChecker())
                found += stream.check(record.payload)
            where = f"server event {record.name} ({_event_id(record.payload)})"
        elif record.kind == "webhook":
            body, secret = record.payload, record.webhook_secret or ""
            found = check_webhook(body, record.headers, secret) if isinstance(body, str) else ["body is not text"]
            where = f"webhook {record.name} (webhook-id {record.headers.get('webhook-id')})"
        elif not self.check_clients:
            return
        elif record.kind == "client_event":
            found = check_client_event(record.payload, self.allow)
            where = f"client event {record.name} ({_event_id(record.payload)})"
        else:
            found = check_rest_body(record.name, record.payload, self.allow)
            where = f"REST body of /{record.name}"
        call = f" on call {record.call_id}" if record.call_id else ""
        self.problems.extend(f"{where}{call}: {problem}" for problem in found)

    def report(self) -> str | None:
        """``None`` when the SDK accepted everything, else the first problems (each names its message)."""
        if not self.problems:
            return None
        unique = list(dict.fromkeys(self.problems))
        shown = "\n  ".join(unique[:20])
        more = f"\n  … and {len(unique) - 20} more" if len(unique) > 20 else ""
        return f"the openai SDK refused {len(unique)} wire message(s):\n  {shown}{more}"


def _event_id(payload: object) -> str:
    event_id = payload.get("event_id") if isinstance(payload, Mapping) else None
    return event_id if isinstance(event_id, str) else "no event_id"


@contextlib.contextmanager
def refereeing(*, check_clients: bool, allow: frozenset[str] = frozenset()) -> Iterator[SdkReferee]:
    """Referee every simulator in the process while the block runs."""
    referee = SdkReferee(check_clients=check_clients, allow=allow)
    with observing(referee):
        yield referee


MARKER = "sdk_referee"
MARKER_HELP = (
    f"{MARKER}(clients=True|False, allow=('temperature', ...)): whether the openai SDK referee also judges what "
    "the client side sends (client events and REST bodies; default: on in tests/e2e, off in tests/simulator), "
    "and which undeclared client-side fields the test sends on purpose"
)


def run_refereed(item: pytest.Item, *, clients_by_default: bool) -> Generator[None, object, object]:
    """The body of a ``pytest_runtest_call`` wrapper: referee the test's call phase, fail it on a mismatch."""
    marker = item.get_closest_marker(MARKER)
    check_clients = bool(marker.kwargs.get("clients", clients_by_default)) if marker else clients_by_default
    allow = frozenset(marker.kwargs.get("allow", ())) if marker else frozenset()
    with refereeing(check_clients=check_clients, allow=allow) as referee:
        result = yield
    problem = referee.report()
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    return result
