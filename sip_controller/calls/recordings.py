"""A bridged call's Twilio recording on its report (#16), in one place for both writers of reports: the process that
supervises the call (``CallRegistry``) and the hangup janitor of any replica (``calls/hangups.py``), which finishes
a call its owner left ``hanging_up`` from the report stored with it.

Twilio's recording callback (``POST /twilio/recording``) may come at any time. It is kept on the Twilio call's row
(its events), and then:

- before the report is written (the call still live, ``hanging_up`` included): the writer reads it from the row
  (:func:`row_recording`, Twilio's last completed recording through ``telephony.callbacks.recording_of``) into
  the report;
- while the report is being written (after the writer read the row, before its write is committed): the callback's
  route finds no report stored yet and leaves it, so the writer looks once more after its write
  (:func:`recording_since`) and sends it as a late ``call.recording``;
- after: the callback's route sends the late ``call.recording`` itself (``CallRegistry.late_recording``).

The outbox keys (``call.recording:<call_id>:<destination>``) keep a recording sent from two places to one
delivery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from sip_controller.state.store import Store
from sip_controller.state.twilio_calls import TwilioCallRow
from sip_controller.telephony.callbacks import recording_of

log = structlog.get_logger("sip_controller.calls.recordings")

#: sends the recording of a call whose report is stored without it (``CallRegistry.late_recording``): whether it did
LateRecording = Callable[[str, Mapping[str, Any]], Awaitable[bool]]


def twilio_id(twilio: object) -> str | None:
    """The Twilio call's row id from a call's Twilio part (``CallRecord.twilio``, a report's ``twilio``, a call row's
    ``inputs["twilio"]``), or None for a call not bridged through Twilio."""
    value = twilio.get("id") if isinstance(twilio, Mapping) else None
    return value if isinstance(value, str) else None


async def twilio_row(store: Store, twilio: object) -> TwilioCallRow | None:
    """The row of the Twilio call whose part is ``twilio`` (see :func:`twilio_id`), or None (not bridged, or no such
    row). Raises what the store raises."""
    found = twilio_id(twilio)
    return None if found is None else await store.get_twilio_call(id=found)


async def row_recording(store: Store, twilio: object) -> dict[str, Any] | None:
    """The recording Twilio's callbacks left on the row of the Twilio call whose part is ``twilio``, or None. Raises
    what the store raises."""
    row = await twilio_row(store, twilio)
    return None if row is None else recording_of(row.events)


async def recording_since(
    store: Store, call_id: str, twilio: object, report: Mapping[str, Any], late: LateRecording
) -> bool:
    """After a call's ``report`` is stored: a recording its Twilio row has that the report lacks (its callback came
    while the report was being written) goes out through ``late``. Whether it did. Best effort: the store away is
    logged (the callback's own check, or Twilio's retry of it, still sends it)."""
    if twilio_id(twilio) is None:
        return False
    try:
        recording = await row_recording(store, twilio)
        if recording is not None and recording != report.get("recording"):
            return await late(call_id, recording)
    except Exception as exc:  # the store's or its driver's
        log.warning("twilio.recording_check_failed", call_id=call_id, error=type(exc).__name__)
    return False
