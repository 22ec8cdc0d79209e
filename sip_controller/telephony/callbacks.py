"""What Twilio POSTs to us (form-encoded, signed): the voice webhook of a number (``A call comes in``), the
status callbacks of a call (``StatusCallback``; answering-machine results ride on them as ``AnsweredBy``) and
the recording callbacks of a recorded call (``RecordingStatusCallback``).

Parsed once at the edge into frozen values; Twilio adds parameters over time, so unknown ones are ignored."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

#: every ``CallStatus`` Twilio reports
CALL_STATUSES = (
    "queued", "initiated", "ringing", "in-progress", "completed", "busy", "no-answer", "canceled", "failed",
)  # fmt: skip
#: the statuses after which a call is over
FINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "canceled", "failed"})
#: a call that ended without being answered, and the ``ended_reason`` its report gets
UNANSWERED_REASONS: Mapping[str, str] = {
    "busy": "busy",
    "no-answer": "no_answer",
    "canceled": "canceled",
    "failed": "failed",
}
#: ``AnsweredBy`` values (``machine_end_*`` only with ``MachineDetection=DetectMessageEnd``)
ANSWERED_BY = (
    "human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax", "unknown",
)  # fmt: skip

#: what answered, as the report says it: a person, an answering machine, a fax, or detection could not tell
Answered = Literal["human", "machine", "fax", "unknown"]


def answered(answered_by: str | None) -> Answered | None:
    """``AnsweredBy`` in the report's words (``machine_start`` and every ``machine_end_*`` are ``machine``);
    None without answering-machine detection."""
    if answered_by is None:
        return None
    if answered_by.startswith("machine_"):
        return "machine"
    return _ANSWERED.get(answered_by, "unknown")


_ANSWERED: Mapping[str, Answered] = {"human": "human", "fax": "fax"}


_CALL_SID = re.compile(r"^CA[0-9a-fA-F]{32}$")
_RECORDING_SID = re.compile(r"^RE[0-9a-fA-F]{32}$")
#: every ``RecordingStatus`` Twilio reports
RECORDING_STATUSES = ("in-progress", "completed", "absent", "failed")
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


class BadCallback(ValueError):
    """A signed request whose parameters are not what Twilio sends (a missing CallSid, an unknown status)."""


def _number(value: str | None) -> str | None:
    """An E.164 number as Twilio writes it, or None (``anonymous``, a SIP URI, a client identity)."""
    if value is None:
        return None
    value = value.strip()
    return value if _E164.match(value) else None


def _call_sid(form: Mapping[str, str]) -> str:
    sid = form.get("CallSid", "").strip()
    if not _CALL_SID.match(sid):
        raise BadCallback("CallSid is missing or not a call SID (CA and 32 hex digits)")
    return sid


def _int(value: str | None) -> int | None:
    if value is None or not value.strip().lstrip("-").isdigit():
        return None
    return int(value.strip())


@dataclass(frozen=True, slots=True)
class VoiceRequest:
    """A number's voice webhook: a call has come in to one of the account's numbers."""

    call_sid: str
    account_sid: str
    #: the caller (E.164), None when withheld or not a phone number
    caller: str | None
    #: the number called (E.164)
    dialed: str | None
    direction: str

    @classmethod
    def parse(cls, form: Mapping[str, str]) -> VoiceRequest:
        return cls(
            call_sid=_call_sid(form),
            account_sid=form.get("AccountSid", ""),
            caller=_number(form.get("From")),
            dialed=_number(form.get("To")),
            direction=form.get("Direction", "inbound"),
        )


@dataclass(frozen=True, slots=True)
class StatusCallback:
    """One status callback of a call (``CallStatus`` and what came with it)."""

    call_sid: str
    status: str
    answered_by: str | None
    #: Twilio's error code of a failed call (``ErrorCode``), and the SIP code when the far end answered one
    error_code: int | None
    sip_response_code: int | None
    duration_s: int | None
    sequence: int | None
    #: ``Timestamp`` as Twilio wrote it (RFC 2822)
    timestamp: str | None
    #: the kind of callback: a call status, or an asynchronous answering-machine result
    kind: Literal["status", "amd"]

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def unanswered_reason(self) -> str | None:
        """``no_answer``, ``busy``, ``canceled`` or ``failed`` for a call that ended unanswered, else None."""
        return UNANSWERED_REASONS.get(self.status)

    @classmethod
    def parse(cls, form: Mapping[str, str]) -> StatusCallback:
        sid = _call_sid(form)
        status = form.get("CallStatus", "").strip()
        answered_by = form.get("AnsweredBy", "").strip() or None
        if answered_by is not None and answered_by not in ANSWERED_BY:
            raise BadCallback(f"AnsweredBy {answered_by[:40]!r} is not one of {', '.join(ANSWERED_BY)}")
        kind: Literal["status", "amd"] = "status"
        if not status:
            if answered_by is None:
                raise BadCallback("neither CallStatus nor AnsweredBy is present")
            kind = "amd"  # an AsyncAmdStatusCallback: the result only
        elif status not in CALL_STATUSES:
            raise BadCallback(f"CallStatus {status[:40]!r} is not one of {', '.join(CALL_STATUSES)}")
        return cls(
            call_sid=sid,
            status=status,
            answered_by=answered_by,
            error_code=_int(form.get("ErrorCode")),
            sip_response_code=_int(form.get("SipResponseCode")),
            duration_s=_int(form.get("CallDuration")),
            sequence=_int(form.get("SequenceNumber")),
            timestamp=(form.get("Timestamp") or None),
            kind=kind,
        )

    def event(self) -> dict[str, object]:
        """The callback as it is kept on the Twilio call (no numbers)."""
        out: dict[str, object] = {"kind": self.kind}
        for name in ("status", "answered_by", "error_code", "sip_response_code", "duration_s", "sequence", "timestamp"):
            value = getattr(self, name)
            if value not in (None, ""):
                out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class RecordingCallback:
    """A recording callback (``recordingStatusCallback`` of a ``<Dial record>``, ``RecordingStatusCallback`` of a
    placed call): the recording of the call ``call_sid`` (the parent call of a bridge) is ready (``completed``),
    or nothing was recorded (``absent``), or it failed."""

    call_sid: str
    recording_sid: str
    status: str
    #: where the recording is (Twilio's API: fetching it needs the account's credentials); None unless completed
    url: str | None
    duration_s: int | None
    channels: int | None
    #: ``DialVerb``, ``OutboundAPI``, …
    source: str | None
    error_code: int | None

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @classmethod
    def parse(cls, form: Mapping[str, str]) -> RecordingCallback:
        sid = _call_sid(form)
        recording_sid = form.get("RecordingSid", "").strip()
        if not _RECORDING_SID.match(recording_sid):
            raise BadCallback("RecordingSid is missing or not a recording SID (RE and 32 hex digits)")
        status = form.get("RecordingStatus", "").strip()
        if status not in RECORDING_STATUSES:
            raise BadCallback(f"RecordingStatus {status[:40]!r} is not one of {', '.join(RECORDING_STATUSES)}")
        url = form.get("RecordingUrl", "").strip() or None
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("https", "http") or not parts.hostname or len(url) > 1000:
                raise BadCallback("RecordingUrl is not an http(s) URL")
        elif status == "completed":
            raise BadCallback("RecordingUrl is missing from a completed recording")
        return cls(
            call_sid=sid,
            recording_sid=recording_sid,
            status=status,
            url=url,
            duration_s=_int(form.get("RecordingDuration")),
            channels=_int(form.get("RecordingChannels")),
            source=(form.get("RecordingSource") or None),
            error_code=_int(form.get("ErrorCode")),
        )

    def report(self) -> dict[str, Any]:
        """The report's ``recording``: ``{sid, url, duration_s, channels}``."""
        return {"sid": self.recording_sid, "url": self.url, "duration_s": self.duration_s, "channels": self.channels}

    def event(self) -> dict[str, Any]:
        """The callback as it is kept on the Twilio call (beside its status callbacks)."""
        out: dict[str, Any] = {"kind": "recording", "status": self.status, **self.report()}
        if self.source is not None:
            out["source"] = self.source[:40]
        if self.error_code is not None:
            out["error_code"] = self.error_code
        return out


def recording_of(events: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The report's ``recording`` from a Twilio call's kept callbacks: its last completed recording, or None."""
    found: dict[str, Any] | None = None
    for event in events:
        if event.get("kind") == "recording" and event.get("status") == "completed":
            found = {name: event.get(name) for name in ("sid", "url", "duration_s", "channels")}
    return found
