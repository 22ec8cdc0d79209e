"""Watching the simulator's wire: what it sends and what it is sent, as data.

An observer is a callable that gets one :class:`WireRecord` for each server event the simulator sends on a
sideband, each client event it receives there, each REST request body it receives, and each webhook it signs
and delivers. Tests use it to check both sides of the wire against OpenAI's own SDK types (the test suite's
"SDK referee"); a tool can use it to log a session.

Observers are registered per simulator (``Simulator(observers=[...])``) or for every simulator in the process
while a :func:`observing` block is open. They run inline, so they must be quick; an observer that raises is
reported in ``Simulator.task_errors`` and never breaks the call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger(__name__)

WireKind = Literal["server_event", "client_event", "rest_request", "webhook"]


@dataclass(frozen=True)
class WireRecord:
    """One message on the simulator's wire.

    ``name``: the event ``type`` (server and client events), the REST operation (``accept``, ``reject``,
    ``refer``, ``hangup``) or the webhook's event type. ``payload``: the parsed JSON (``None`` for a REST request
    without a body); for a webhook, the exact body that was signed (a ``str``). ``headers`` and
    ``webhook_secret`` are set for webhooks only: the delivery's headers and the simulator's own signing secret,
    so an observer can verify the signature the way a receiver would.
    """

    kind: WireKind
    call_id: str | None
    name: str
    payload: object
    headers: Mapping[str, str] = field(default_factory=dict)
    webhook_secret: str | None = None


WireObserver = Callable[[WireRecord], None]

_process_observers: list[WireObserver] = []


@contextlib.contextmanager
def observing(observer: WireObserver) -> Iterator[WireObserver]:
    """Show ``observer`` every message of every simulator in this process until the block ends."""
    _process_observers.append(observer)
    try:
        yield observer
    finally:
        _process_observers.remove(observer)


def notify(own: Sequence[WireObserver], record: WireRecord, errors: list[BaseException]) -> None:
    """Hand ``record`` to the simulator's own observers and the process-wide ones; failures go to ``errors``."""
    for observer in (*own, *_process_observers):
        try:
            observer(record)
        except Exception as exc:
            errors.append(exc)
            log.exception("simulator wire observer failed on %s %s", record.kind, record.name)
