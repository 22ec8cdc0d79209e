"""One Twilio call on the stand-in: its progress (queued → initiated → ringing → in-progress → a final status),
its callee or caller, answering-machine detection, and the TwiML it runs, ``<Dial><Sip>`` into the
simulator's OpenAI side included.

Status callbacks go out in order from one queue per call, as Twilio sends them: asynchronously, never
blocking the call, never retried. TwiML fetches (the ``Url``, a ``<Dial action>``, a ``referUrl``, a
``<Redirect>``) are synchronous: the call waits for the answer, and a failed fetch ends it with 11200.

A bridged OpenAI leg runs the person's script (:meth:`Callee.leg_spec <.twilio_spec.Callee.leg_spec>`); when
the person hangs up there (the OpenAI call ends by its caller), the Twilio call ends too; when the controller
hangs the OpenAI call up, the ``<Dial>`` is over and the TwiML goes on after it (to its end: a hang-up).

The person's script runs on across the call (:class:`~.twilio_script.PersonScript`, #16): a live update that
parks the call (new TwiML: the ``<Dial>`` ends, the leg is hung up) leaves the steps the leg had not reached to
what runs next: a ``<Gather>`` hears them (:meth:`CallEngine._gather`), a later ``<Dial><Sip>`` places a new
OpenAI leg with what is left, opening with the reply to what the Gather heard last.

``<Gather>`` (durations nominal, times ``time_scale``): its nested ``<Say>``/``<Pause>`` play first, then it listens
to the script: a ``say`` is heard after its length (``SpeechResult`` its text, ``Confidence`` 0.92); each
``every``-second part of ``hold_music`` ends one Gather (heard as its text, 0.35, after ``every`` seconds; silent
music: nothing, after the Gather's ``timeout``); a ``wait`` is silence; digits (``dtmf``) are heard by a Gather
listening for them (``Digits``); ``hangup``, or the script running out, is the person hanging up. Something heard
(or ``actionOnEmptyResult``) requests ``action`` and runs the TwiML answered; nothing heard goes on with the next
verb. A machine (voicemail, fax) says nothing to a Gather.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .model import DTMF_GAP
from .records import SimCall
from .twilio_records import Bridge, Callback, GatherRun, Spoken, TwilioCall
from .twilio_script import PersonScript
from .twilio_spec import Callee, InboundCall, speech_seconds
from .twilio_twiml import Dial, Document, Gather, Hangup, Pause, Play, Redirect, Reject, Say

API_VERSION = "2010-04-01"
OPENAI_SIP_HOST = "sip.api.openai.com"
#: TwiML documents one call may run (each redirect, action or refer answer is one more; a ``<Gather>``'s answer
#: counts against :data:`MAX_GATHERS` instead)
MAX_DOCUMENTS = 20
#: ``<Gather>`` one call may run (a 40-minute hold heard in 20-second parts is 120)
MAX_GATHERS = 5000
#: real seconds a ``<Dial><Sip>`` into OpenAI rings beyond its (scaled) ``timeout``: the controller's accept takes
#: real time, which the time scale does not compress (at 0.002 a 30-second timeout is 60 ms); Twilio then gives up
#: (a CANCEL: the leg ends by its caller), before the leg would stop ringing on its own
ACCEPT_GRACE_S = 1.0
#: ``Confidence`` of what a Gather heard: a person's words, and music or a recording
SPEECH_CONFIDENCE = 0.92
MUSIC_CONFIDENCE = 0.35
#: seconds a fax line stays up after AMD called it
FAX_SECONDS = 3.0
#: how the OpenAI leg's ending maps to ``DialCallStatus``/SIP code when it was never answered
_REJECT_BUSY = frozenset({486, 600, 603})


@dataclass(frozen=True)
class CallOptions:
    """What a Calls API ``create`` asked for (or, for an inbound call, the number's configuration)."""

    url: str | None = None
    method: str = "POST"
    twiml: str | None = None
    status_callback: str | None = None
    status_events: frozenset[str] = frozenset({"completed"})
    status_method: str = "POST"
    timeout: float = 60.0
    machine_detection: str | None = None
    amd_timeout: float = 30.0
    async_amd: bool = False
    async_amd_callback: str | None = None
    async_amd_method: str = "POST"
    record: bool = False
    recording_channels: str = "mono"
    recording_callback: str | None = None
    recording_method: str = "POST"


class Switchboard(Protocol):
    """What a call needs from the stand-in (:class:`~.twilio_side.TwilioSide`): the clock, the controller's
    URLs (signed requests), and the OpenAI side's calls."""

    @property
    def base_url(self) -> str: ...
    @property
    def time_scale(self) -> float: ...
    @property
    def project_id(self) -> str: ...
    @property
    def task_errors(self) -> list[BaseException]: ...
    @property
    def recording_delay(self) -> float: ...
    def now(self) -> float: ...
    def scaled(self, seconds: float) -> float: ...
    def has_voice_url(self, number: str) -> tuple[str, str] | None: ...
    async def send(self, record: TwilioCall, kind: str, url: str, method: str, params: dict[str, str]) -> Callback: ...
    async def fetch_twiml(
        self, record: TwilioCall, kind: str, url: str, method: str, params: dict[str, str]
    ) -> Document | None: ...
    def read_twiml(self, record: TwilioCall, text: str | bytes, source: str) -> Document | None: ...
    async def place_leg(self, engine: CallEngine, dial: Dial, headers: list[tuple[str, str]]) -> SimCall: ...
    async def hang_up_leg(self, call_id: str) -> None: ...
    async def wait_answered(self, call_id: str, timeout: float) -> bool: ...
    def leg(self, call_id: str) -> SimCall | None: ...


class _Over(Exception):
    """The call has ended: the flow stops here."""


def rfc2822_now() -> str:
    return datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class CallEngine:
    """Runs one :class:`TwilioCall`: exactly one of ``callee`` (an outbound call) and ``caller`` (inbound)."""

    def __init__(
        self,
        side: Switchboard,
        record: TwilioCall,
        options: CallOptions,
        *,
        callee: Callee | None = None,
        caller: InboundCall | None = None,
    ) -> None:
        if (callee is None) == (caller is None):
            raise ValueError("a call has a callee (outbound) or a caller (inbound)")
        self.side = side
        self.rec = record
        self.options = options
        self.callee = callee
        self.caller = caller
        self._tasks: set[asyncio.Task[None]] = set()
        self._flow: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[tuple[str, str, str, dict[str, str]] | None] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._sequence = 0
        self._documents = 0
        self._leg: str | None = None
        self._ending = False
        self._redirected: asyncio.Task[None] | None = None
        #: a ``<Dial record>`` that was answered: the Dial and when its recording began (and ended)
        self._dial_recording: tuple[Dial, float] | None = None
        self._dial_recording_end: float | None = None
        #: the far party's script across the call's legs and gathers
        steps = callee.steps if callee is not None else caller.steps if caller is not None else []
        person = callee.is_person if callee is not None else True
        self.script = PersonScript(steps, person=person, time_scale=side.time_scale)
        self._gathers = 0
        #: the next document comes from a Gather's action (it counts against MAX_GATHERS, not MAX_DOCUMENTS)
        self._from_gather = False
        #: the URL the running document came from (a Gather without ``action`` requests it), None for inline TwiML
        self._document_url: tuple[str, str] | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._sender = asyncio.create_task(self._send_loop(), name=f"twilio:{self.rec.sid}:callbacks")
        flow = self._outbound() if self.callee is not None else self._inbound()
        self._flow = self._spawn(self._guarded(flow), "flow")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"twilio:{self.rec.sid}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.side.task_errors.append(task.exception())  # type: ignore[arg-type]

    async def _guarded(self, flow: Coroutine[Any, Any, None]) -> None:
        with contextlib.suppress(_Over):
            await flow
            self.finish("completed", "twiml")

    async def shutdown(self) -> None:
        """The simulator stops: cancel everything, callbacks included."""
        tasks = [*self._tasks, *([self._sender] if self._sender is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def scaled(self, seconds: float) -> float:
        return self.side.scaled(seconds)

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(self.scaled(seconds))

    # ---- parameters and callbacks ----------------------------------------------------------------

    def params(self, status: str | None = None) -> dict[str, str]:
        """The parameters every Twilio request about this call carries."""
        rec = self.rec
        params = {
            "AccountSid": rec.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": rec.sid,
            "CallStatus": status or rec.status,
            "Called": rec.to,
            "Caller": rec.from_,
            "Direction": rec.direction,
            "From": rec.from_,
            "To": rec.to,
        }
        if rec.answered_by is not None:
            params["AnsweredBy"] = rec.answered_by
        return params

    def _status_event(self, event: str, status: str) -> None:
        """Queue the status callback for ``event`` if the call subscribed to it (``completed`` always)."""
        opts = self.options
        if opts.status_callback is None or (event not in opts.status_events and event != "completed"):
            return
        params = self.params(status)
        params.update(CallbackSource="call-progress-events", SequenceNumber=str(self._sequence),
                      Timestamp=rfc2822_now())  # fmt: skip
        self._sequence += 1
        if event == "completed":
            rec = self.rec
            params["CallDuration"] = str(rec.duration or 0)
            if rec.sip_response_code is not None:
                params["SipResponseCode"] = str(rec.sip_response_code)
            if rec.error_code is not None:
                params["ErrorCode"] = str(rec.error_code)
                params["ErrorMessage"] = rec.error_message or ""
        self._outbox.put_nowait(("status", opts.status_callback, opts.status_method, params))

    async def _send_loop(self) -> None:
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            kind, url, method, params = item
            await self.side.send(self.rec, kind, url, method, params)

    # ---- the end -----------------------------------------------------------------------------------

    def finish(self, status: str, by: str, *, sip: int | None = None, error: int | None = None,
               message: str | None = None) -> bool:  # fmt: skip
        """End the call now with ``status``; the hang-up of a live OpenAI leg and the final callbacks follow in
        the background. False if it was already ending."""
        if self._ending:
            return False
        self._ending = True
        rec = self.rec
        rec.status, rec.ended_by, rec.ended_at = status, by, self.side.now()
        rec.sip_response_code = sip if sip is not None else (200 if rec.answered_at is not None else None)
        rec.error_code, rec.error_message = error, message
        answered = rec.answered_at
        rec.duration = 0 if answered is None else round((rec.ended_at - answered) / self.side.time_scale)
        self._spawn(self._wrap_up(), "wrap-up")
        return True

    async def _wrap_up(self) -> None:
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._hang_up_leg()
        self._collect_voicemail()
        self._status_event("completed", self.rec.status)
        recording = self._recording()
        if recording is not None:  # Twilio needs a moment to store the file: its callback comes after the call's
            await self.sleep(self.side.recording_delay)
            self._outbox.put_nowait(recording)
        self._outbox.put_nowait(None)
        if self._sender is not None:
            await asyncio.wait({self._sender})
        self.rec.ended.set()

    async def _hang_up_leg(self) -> None:
        leg, self._leg = self._leg, None
        if leg is not None:
            await self.side.hang_up_leg(leg)

    def _collect_voicemail(self) -> None:
        rec = self.rec
        if rec.beep_at is None:
            return
        heard: list[tuple[float, str]] = [(s.t, s.text) for s in rec.said if s.recorded]
        for call_id in rec.openai_call_ids:
            leg = self.side.leg(call_id)
            for response in leg.responses if leg is not None else ():
                started = response.audio_started_at
                if started is not None and started >= rec.beep_at and response.transcript.strip():
                    heard.append((started, response.transcript))
        rec.voicemail_message = [text for _, text in sorted(heard, key=lambda item: item[0])]

    def _recording(self) -> tuple[str, str, str, dict[str, str]] | None:
        """The call's recording (``Record=true`` on the create, or an answered ``<Dial record>``), kept on the
        record; its callback, when one was asked for."""
        opts, rec = self.options, self.rec
        dialled = self._dial_recording
        if rec.answered_at is None or (not opts.record and dialled is None):
            return None
        sid = new_sid("RE")
        if opts.record:
            duration, dual = rec.duration or 0, opts.recording_channels == "dual"
            callback, method, source = opts.recording_callback, opts.recording_method, "OutboundAPI"
        else:
            assert dialled is not None
            dial, began = dialled
            ended = self._dial_recording_end if self._dial_recording_end is not None else rec.ended_at or began
            duration, dual = round(max(0.0, ended - began) / self.side.time_scale), dial.record.endswith("-dual")
            callback, method, source = dial.recording_callback, dial.recording_method, "DialVerb"
        rec.recording = {
            "sid": sid,
            "url": f"{self.side.base_url}/{API_VERSION}/Accounts/{rec.account_sid}/Recordings/{sid}",
            "duration": duration,
            "channels": 2 if dual else 1,
        }
        if callback is None:
            return None
        params = {
            "AccountSid": rec.account_sid,
            "CallSid": rec.sid,
            "RecordingSid": sid,
            "RecordingUrl": rec.recording["url"],
            "RecordingStatus": "completed",
            "RecordingDuration": str(rec.recording["duration"]),
            "RecordingChannels": str(rec.recording["channels"]),
            "RecordingSource": source,
            "RecordingStartTime": rfc2822_now(),
        }
        return ("recording", callback, method, params)

    def over(self, status: str, by: str, **details: Any) -> _Over:
        """Finish with ``status`` and return the exception that stops the flow (``raise engine.over(…)``)."""
        self.finish(status, by, **details)
        return _Over()

    # ---- from outside: the Calls API ---------------------------------------------------------------

    def cancel_or_complete(self, wanted: str) -> None:
        """``Status=completed|canceled`` on an update: a ringing or queued call is canceled (either value), an
        answered one completed (``completed`` only; ``canceled`` leaves it be)."""
        if self._ending:
            return
        if self.rec.answered_at is None:
            self.finish("canceled", "api", sip=487)
        elif wanted == "completed":
            self.finish("completed", "api")

    def redirect(self, document: Document, source: str) -> None:
        """A live update with new TwiML: what runs now stops (a bridged OpenAI leg is hung up), the new runs."""
        self._replace_flow(self._run_new(document, source))

    def redirect_to_url(self, url: str, method: str) -> None:
        """A live update with a ``Url``: what runs now stops, then the URL is asked for TwiML and that runs."""
        self._replace_flow(self._fetch_new(url, method))

    def _replace_flow(self, following: Coroutine[Any, Any, None]) -> None:
        if self._ending:
            following.close()
            return
        old = self._flow
        self._flow = self._spawn(self._guarded(self._after(old, following)), "redirected")

    async def _after(self, old: asyncio.Task[None] | None, following: Coroutine[Any, Any, None]) -> None:
        if old is not None and not old.done():
            old.cancel()
            await asyncio.gather(old, return_exceptions=True)
        await self._hang_up_leg()
        await following

    async def _run_new(self, document: Document, source: str) -> None:
        self._document_url = None
        await self.run(document, source)

    async def _fetch_new(self, url: str, method: str) -> None:
        document = await self._fetch_or_end("redirect", url, method, self.params())
        await self.run(document, "redirect")

    # ---- answering ---------------------------------------------------------------------------------

    def answer(self) -> None:
        """The call is up: in-progress, the ``answered`` callback, the far side's own hang-up timer."""
        rec = self.rec
        if rec.answered_at is not None or self._ending:
            return
        rec.answered_at = self.side.now()
        rec.status = "in-progress"
        self._status_event("answered", "in-progress")
        callee = self.callee
        if callee is not None and callee.outcome == "voicemail":
            self._spawn(self._voicemail(callee), "voicemail")
        else:
            limit = self.caller.max_call_seconds if self.caller is not None else None
            if callee is not None:
                limit = FAX_SECONDS + callee.amd_seconds if callee.outcome == "fax" else callee.max_call_seconds
            if limit is not None:
                self._spawn(self._far_side_hangs_up(limit), "far-side")

    async def _far_side_hangs_up(self, after: float) -> None:
        await self.sleep(after)
        self.finish("completed", "caller" if self.caller is not None else "callee")

    async def _voicemail(self, callee: Callee) -> None:
        await self.sleep(callee.greeting_length)
        if callee.beep:
            self.rec.beep_at = self.side.now()
        await self._far_side_hangs_up(callee.max_message_seconds)

    # ---- outbound ----------------------------------------------------------------------------------

    async def _outbound(self) -> None:
        callee, rec = self.callee, self.rec
        assert callee is not None
        rec.status = "initiated"
        self._status_event("initiated", "initiated")
        if callee.outcome == "busy":
            raise self.over("busy", "carrier", sip=callee.sip_response_code or 486)
        if callee.outcome == "failed":
            raise self.over("failed", "carrier", sip=callee.sip_response_code or 404, error=callee.error_code,
                            message="the carrier refused the call")  # fmt: skip
        rec.status = "ringing"
        self._status_event("ringing", "ringing")
        await self.sleep(callee.rings_for(self.options.timeout))
        if callee.outcome == "no_answer":
            raise self.over("no-answer", "carrier", sip=callee.sip_response_code or 487)
        if callee.outcome == "hangup_while_ringing":
            raise self.over("busy", "callee", sip=callee.sip_response_code or 603)
        self.answer()
        await self._detect_machine(callee)
        document = await self._instructions()
        await self.run(document, "Twiml" if self.options.twiml is not None else "Url")

    def _amd_delay(self, callee: Callee, verdict: str) -> float:
        if verdict.startswith("machine_end"):
            return callee.greeting_length + 0.5
        if verdict == "unknown":
            return self.options.amd_timeout
        if verdict == "machine_start":
            return min(callee.amd_seconds, callee.greeting_length)
        return callee.amd_seconds

    async def _detect_machine(self, callee: Callee) -> None:
        mode = self.options.machine_detection
        if mode is None:
            return
        verdict = callee.verdict(mode)
        delay = self._amd_delay(callee, verdict)
        if self.options.async_amd:
            self._spawn(self._async_amd(verdict, delay), "amd")
            return
        await self.sleep(delay)
        self.rec.answered_by = verdict

    async def _async_amd(self, verdict: str, delay: float) -> None:
        await self.sleep(delay)
        self.rec.answered_by = verdict
        url = self.options.async_amd_callback
        if url is None:
            return
        params = {
            "AccountSid": self.rec.account_sid,
            "CallSid": self.rec.sid,
            "AnsweredBy": verdict,
            "MachineDetectionDuration": str(round(delay * 1000)),
        }
        self._outbox.put_nowait(("amd", url, self.options.async_amd_method, params))

    async def _instructions(self) -> Document:
        opts = self.options
        if opts.twiml is None:
            assert opts.url is not None
            return await self._fetch_or_end("voice", opts.url, opts.method, self.params())
        self._document_url = None
        document = self.side.read_twiml(self.rec, opts.twiml, "Twiml")
        if document is None:
            raise self.over("completed", "twiml", error=self._failure_code(), message="the Twiml was refused")
        return document

    # ---- inbound -----------------------------------------------------------------------------------

    async def _inbound(self) -> None:
        caller = self.caller
        assert caller is not None
        self.rec.status = "ringing"
        if caller.hangup_while_ringing is not None:
            self._spawn(self._caller_gives_up(caller.hangup_while_ringing), "gives-up")
        voice = self.side.has_voice_url(self.rec.to)
        if voice is None:
            self.rec.problem(f"the number {self.rec.to} has no voice URL configured")
            raise self.over("failed", "carrier", sip=404, error=11200, message="no voice URL")
        document = await self._fetch_or_end("voice", *voice, self.params())
        await self.run(document, "voice")

    async def _caller_gives_up(self, after: float) -> None:
        await self.sleep(after)
        if self.rec.answered_at is None:
            self.finish("no-answer", "caller", sip=487)

    # ---- TwiML ---------------------------------------------------------------------------------------

    async def run(self, document: Document, source: str) -> None:
        """Run ``document``'s verbs in order; a ``<Dial action>``, ``<Redirect>`` or refer answer replaces the
        rest with the document fetched. Reaching the end hangs up (the caller of ``run`` finishes)."""
        while True:
            if self._from_gather:
                self._from_gather = False
            else:
                self._documents += 1
            if self._documents > MAX_DOCUMENTS:
                self.rec.problem(f"more than {MAX_DOCUMENTS} TwiML documents on one call: hung up")
                raise self.over("completed", "twiml")
            following = await self._verbs(document)
            if following is None:
                return
            document = following

    async def _verbs(self, document: Document) -> Document | None:
        for verb in document.verbs:
            if isinstance(verb, Say):
                self.answer()
                for _ in range(max(verb.loop, 1)):
                    beep = self.rec.beep_at
                    self.rec.said.append(Spoken(self.side.now(), verb.text, beep is not None))
                    await self.sleep(speech_seconds(verb.text))
            elif isinstance(verb, Pause):
                self.answer()
                await self.sleep(verb.length)
            elif isinstance(verb, Hangup):
                raise self.over("completed", "twiml")
            elif isinstance(verb, Reject):
                if self.rec.answered_at is not None or self.rec.direction != "inbound":
                    self.rec.problem("<Reject> on a call that is not a ringing inbound call: hung up instead")
                    raise self.over("completed", "twiml")
                raise self.over("busy" if verb.reason == "busy" else "no-answer", "twiml",
                                sip=486 if verb.reason == "busy" else 603)  # fmt: skip
            elif isinstance(verb, Redirect):
                return await self._fetch_or_end("redirect", verb.url, verb.method, self.params())
            elif isinstance(verb, Gather):
                following = await self._gather(verb)
                if following is not None:
                    return following
            else:
                following = await self._dial(verb)
                if following is not None:
                    return following
        return None

    def _failure_code(self) -> int:
        """Twilio's code for the TwiML just refused (12100, 12200, 11750), else 11200 (nothing was fetched)."""
        runs = self.rec.twiml
        if runs and runs[-1].error:
            code = runs[-1].error.split(":", 1)[0]
            if code.isdigit():
                return int(code)
        return 11200

    async def _fetch_or_end(self, kind: str, url: str, method: str, params: dict[str, str]) -> Document:
        runs = len(self.rec.twiml)
        document = await self.side.fetch_twiml(self.rec, kind, url, method, params)
        if document is None:
            code = self._failure_code() if len(self.rec.twiml) > runs else 11200
            raise self.over("completed", "twiml", error=code, message=f"the {kind} URL gave no TwiML to run")
        self._document_url = (url, method)
        return document

    def _invite_headers(self, dial: Dial) -> list[tuple[str, str]]:
        """The INVITE's headers as OpenAI lists them in ``sip_headers``: From (the caller ID), To (the URI
        without its headers), Call-ID, Twilio's own, then the URI's headers in order."""
        assert dial.sip is not None
        rec, sip = self.rec, dial.sip
        shown = dial.caller_id or rec.from_
        params = "".join(f";{k}={v}" if v else f";{k}" for k, v in sip.params.items())
        return [
            ("From", f"<sip:{shown}@sip.twilio.com>;tag={secrets.randbelow(10**8):08d}_{secrets.token_hex(4)}"),
            ("To", f"<{sip.scheme}:{sip.user}@{sip.host}{params}>"),
            ("Call-ID", f"{secrets.token_hex(16)}@0.0.0.0"),
            ("X-Twilio-AccountSid", rec.account_sid),
            ("X-Twilio-CallSid", rec.sid),
            *sip.headers,
        ]

    async def _dial(self, dial: Dial) -> Document | None:
        if dial.sip is None:
            return await self._dial_elsewhere(dial, f"tel:{dial.number}")
        if dial.sip.host != OPENAI_SIP_HOST:  # a SIP endpoint of someone else's (a transfer target): it answers
            return await self._dial_elsewhere(dial, dial.sip.uri)
        if not dial.answer_on_bridge:
            self.answer()
        sip = dial.sip
        headers = self._invite_headers(dial)
        bridge = Bridge(self.side.now(), sip.uri, [{"name": n, "value": v} for n, v in headers], None)
        self.rec.bridges.append(bridge)
        if sip.user != self.side.project_id:
            self.rec.problem(f"<Sip> {sip.uri.split('?')[0]} is not this project's OpenAI SIP URI: SIP 404")
            bridge.status, bridge.sip_response_code = "failed", 404
            return await self._dial_over(dial, bridge)
        if sip.params.get("transport") != "tls":
            self.rec.problem("<Sip> without ;transport=tls: OpenAI's SIP endpoint is reached over TLS")
        leg = await self.side.place_leg(self, dial, headers)
        self.script.leg_began(leg)
        bridge.call_id = self._leg = leg.call_id
        answered = await self.side.wait_answered(leg.call_id, self.scaled(dial.timeout) + ACCEPT_GRACE_S)
        if not answered:
            await self._hang_up_leg()
            code = leg.reject_status
            if code is not None:
                bridge.status = "busy" if code in _REJECT_BUSY else "failed"
                bridge.sip_response_code = code
            else:
                bridge.status, bridge.sip_response_code = "no-answer", 487
            bridge.ended_at = self.side.now()
            return await self._dial_over(dial, bridge)
        bridge.answered_at = self.side.now()
        bridge.status = "in-progress"
        bridge.sip_response_code = 200
        self.answer()
        self._recording_begins(dial)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.scaled(dial.time_limit)):
                    await leg.ended.wait()
        finally:  # over, or cut short by an update redirecting the call (the leg is hung up after)
            bridge.ended_at = self.side.now()
            bridge.status = "completed"
            self._recording_ends(dial)
        self._leg = None if leg.is_ended else self._leg
        await self._hang_up_leg()
        if leg.ended_by == "caller":  # the person (or machine) hung up
            raise self.over("completed", "caller" if self.caller is not None else "callee")
        if leg.ended_by == "refer":
            return await self._refer(dial, leg.refers[-1] if leg.refers else "")
        return await self._dial_over(dial, bridge)

    async def _dial_over(self, dial: Dial, bridge: Bridge) -> Document | None:
        """The ``<Dial>`` is over: its ``action`` decides what comes next, else the TwiML goes on."""
        if dial.action is None:
            return None
        params = self.params()
        started = bridge.answered_at
        params.update(
            DialCallStatus=bridge.status,
            DialCallSid=new_sid("CA"),
            DialCallDuration=str(0 if started is None or bridge.ended_at is None
                                 else round((bridge.ended_at - started) / self.side.time_scale)),
            DialSipResponseCode=str(bridge.sip_response_code or 0),
        )  # fmt: skip
        return await self._fetch_or_end("action", dial.action, dial.method, params)

    async def _refer(self, dial: Dial, target: str) -> Document | None:
        if dial.refer_url is None:
            self.rec.problem(f"OpenAI sent a REFER to {target}, but the <Dial> had no referUrl: Twilio refuses it")
            return None
        params = self.params()
        params.update(ReferTransferTarget=f"<{target}>")
        return await self._fetch_or_end("refer", dial.refer_url, dial.refer_method, params)

    async def _dial_elsewhere(self, dial: Dial, uri: str) -> Document | None:
        """``<Dial><Number>`` or a ``<Sip>`` that is not OpenAI's (a transfer target): it answers at once, and the
        call stays with it until the far side hangs up (or ``timeLimit``)."""
        self.answer()
        bridge = Bridge(self.side.now(), uri, [], None, status="in-progress", sip_response_code=200)
        bridge.answered_at = bridge.t
        self.rec.bridges.append(bridge)
        self._recording_begins(dial)
        try:
            await self.sleep(dial.time_limit)
        finally:
            bridge.status, bridge.ended_at = "completed", self.side.now()
            self._recording_ends(dial)
        return await self._dial_over(dial, bridge)

    def _recording_begins(self, dial: Dial) -> None:
        if dial.records and self._dial_recording is None:
            self._dial_recording = (dial, self.side.now())

    def _recording_ends(self, dial: Dial) -> None:
        if self._dial_recording is not None and self._dial_recording[0] is dial:
            self._dial_recording_end = self.side.now()

    # ---- <Gather> (#16) --------------------------------------------------------------------------------

    async def _gather(self, gather: Gather) -> Document | None:
        """Play the prompts, listen to the far party's script, then request ``action`` with what was heard (or
        with nothing, ``actionOnEmptyResult``): its TwiML is what runs next. None: on with the next verb."""
        self.answer()
        self._gathers += 1
        if self._gathers > MAX_GATHERS:
            self.rec.problem(f"more than {MAX_GATHERS} <Gather> on one call: hung up")
            raise self.over("completed", "twiml")
        for prompt in gather.prompts:
            if isinstance(prompt, Say):
                for _ in range(max(prompt.loop, 1)):
                    self.rec.said.append(Spoken(self.side.now(), prompt.text))
                    await self.sleep(speech_seconds(prompt.text))
            elif isinstance(prompt, Pause):
                await self.sleep(prompt.length)
            else:
                assert isinstance(prompt, Play)  # its audio is not fetched: no time passes
        self.script.sync()  # a leg hung up by the update that brought this Gather: how far it got
        run = GatherRun(self.side.now(), " ".join(sorted(gather.input)), gather.timeout)
        self.rec.gathers.append(run)
        started = self.side.now()
        try:
            await self._listen(gather, run)
        finally:
            run.ended_at = self.side.now()
            run.seconds = round((run.ended_at - started) / self.side.time_scale, 3)
        heard = run.heard is not None or run.digits is not None
        if not heard and not gather.action_on_empty_result:
            return None
        target = (gather.action, gather.method) if gather.action else self._document_url
        if target is None:
            self.rec.problem("<Gather> without action in TwiML that came from no URL: nowhere to send what it heard")
            return None
        params = self.params()
        if run.heard is not None:
            params.update(SpeechResult=run.heard, Confidence=str(run.confidence))
        if run.digits is not None:
            params["Digits"] = run.digits
        run.action = target[0]
        sent = len(self.rec.callbacks)
        try:
            document = await self._fetch_or_end("gather", target[0], target[1], params)
        finally:
            if len(self.rec.callbacks) > sent:
                run.status = self.rec.callbacks[sent].status
        run.answered = document.names()
        self._from_gather = True
        return document

    async def _listen(self, gather: Gather, run: GatherRun) -> None:
        """What the Gather hears of the script, moving it on; fills ``run`` (nothing heard: it stays empty)."""
        script = self.script
        hangs_up = "callee" if self.callee is not None else "caller"
        silence = 0.0  # nominal seconds heard of nothing (the Gather's timeout runs)
        for _ in range(len(script.steps) + 1):  # each round takes a step, or ends the Gather
            step = script.current() if script.person else None
            if step is None:
                if script.person:  # nothing left to say or wait for: the person hangs up
                    raise self.over("completed", hangs_up)
                await self.sleep(max(0.0, gather.timeout - silence))
                return
            if step.hold_music is not None:
                music = step.hold_music
                if music.text is not None and gather.speech:
                    await self.sleep(music.every)
                    script.take_chunk()
                    run.heard, run.confidence = music.text, MUSIC_CONFIDENCE
                else:
                    await self.sleep(max(0.0, gather.timeout - silence))
                    script.take_chunk()
                return
            if step.say is not None:
                seconds = speech_seconds(step.say)
                await self.sleep(seconds)
                script.take_step()
                if gather.speech:
                    run.heard, run.confidence = step.say, SPEECH_CONFIDENCE
                    if step.reply is not None or step.tool is not None:
                        script.opening = step  # answered on the next leg
                    return
                silence += seconds
            elif step.wait is not None:
                room = gather.timeout - silence
                if step.wait >= room:
                    await self.sleep(max(0.0, room))
                    script.take_wait(max(0.0, room))
                    return
                await self.sleep(step.wait)
                script.take_step()
                silence += step.wait
            elif step.dtmf is not None:
                seconds = DTMF_GAP * len(step.dtmf)
                await self.sleep(seconds)
                script.take_step()
                if gather.dtmf:
                    digits = step.dtmf.split(gather.finish_on_key)[0] if gather.finish_on_key else step.dtmf
                    run.digits = digits[: gather.num_digits] if gather.num_digits else digits
                    return
                silence += seconds
            else:  # hangup
                script.take_step()
                raise self.over("completed", hangs_up)
            if silence >= gather.timeout:
                return
