"""All live calls: owns their tasks, admits or rejects new ones, keeps recent records, drains on shutdown.

Every call taken is written to the store before it is relied on (design principle 6): ``admit`` (the intake's dedupe
claims, the caller's cluster-wide rate, cluster-wide capacity, the session's inputs, the deadlines and the
``call.started`` outbox rows, in ONE transaction: #18) before the accept goes out; what it records goes in batches
through its :class:`~sip_controller.calls.journal.CallJournal`; ``finish_call`` writes the report and its outbox
rows in one transaction when it ends. A rejected call is recorded too: a row finished at once as ``rejected`` (in
history, reported through the outbox like any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from sip_controller.agent import session, templates
from sip_controller.calls import parking, routing
from sip_controller.calls.actions import Park
from sip_controller.calls.admission import ANONYMOUS, BUSY, DECLINE, UNAVAILABLE, CallerRateLimiter, Refusal
from sip_controller.calls.analysis import requests_for as analysis_requests
from sip_controller.calls.hangups import leave_hanging_up
from sip_controller.calls.incoming import IncomingCall
from sip_controller.calls.inputs import MachineDetection, Shutdown
from sip_controller.calls.journal import CallJournal
from sip_controller.calls.machine import CallMachine
from sip_controller.calls.outbox import ended_items, recording_document, recording_items, started_items
from sip_controller.calls.park_report import close_if_parked
from sip_controller.calls.recordings import recording_since, twilio_row
from sip_controller.calls.report import CallRecord, twilio_inputs, twilio_part
from sip_controller.calls.states import CallState, EndedReason
from sip_controller.calls.supervisor import CallOptions, CallSupervisor
from sip_controller.calls.takeover import TAKEOVER, pending_reason, rebuild_record
from sip_controller.config import Settings, TwilioCredentials
from sip_controller.realtime.rest import OpenAIError, RealtimeCalls
from sip_controller.realtime.retries import DEFAULT_POLICY, RetryPolicy, with_quick_retries
from sip_controller.realtime.sideband import SidebandConnector
from sip_controller.state.records import (
    HANGING_UP,
    Admission,
    CallerLimit,
    CallExists,
    CallRow,
    Duplicate,
    Entry,
    Fence,
    Fenced,
    NewCall,
    OutboxItem,
    StoredEntry,
    StoreError,
)
from sip_controller.state.store import Store
from sip_controller.state.twilio_calls import MERGED, TwilioCallRow
from sip_controller.telephony.callbacks import recording_of
from sip_controller.telephony.calls_api import TwilioCalls, TwilioError
from sip_controller.telephony.twiml import CORRELATION_HEADER, listen_parked, transfer_to, well_formed_correlation

#: answering-machine verdicts kept for calls not (yet) live anywhere (``CallRegistry.machine_detected``)
MAX_KEPT_VERDICTS = 1000

log = structlog.get_logger("sip_controller.calls.registry")

FinishedHook = Callable[[CallRecord], None]


@dataclass
class _Live:
    supervisor: CallSupervisor | None
    task: asyncio.Task[None]
    record: CallRecord
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: the store's row: its journal (a supervised call), or what a rejected call's row is written from
    journal: CallJournal | None = None
    new_call: NewCall | None = None


@dataclass(frozen=True, slots=True)
class _Resumed:
    """A parked call's next leg (#16): the earlier legs' reports, the parks so far, and what to go on with."""

    documents: list[dict[str, Any]]
    spells: list[dict[str, Any]]
    profile: str
    heard: str | None
    reason: str | None


@dataclass(slots=True)
class _Ended:
    """What the recent-calls buffer keeps of a finished call: its record, and the event that says its finishing write
    is done. Not the supervisor, machine, journal or sideband: they go when the call does (#18)."""

    record: CallRecord
    done: asyncio.Event


class CallRegistry:
    def __init__(
        self,
        settings: Settings,
        api: RealtimeCalls,
        connect: SidebandConnector,
        *,
        store: Store,
        owner: str,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        retry: RetryPolicy = DEFAULT_POLICY,
        journal_flush_s: float = 0.5,
    ) -> None:
        """``store`` holds the calls (shared by every replica); ``owner`` is this process's lease id."""
        self._settings = settings
        self._store = store
        self.owner = owner
        self._wall_clock = wall_clock
        self._journal_flush_s = journal_flush_s
        #: the finishing writes under way (awaited by shutdown)
        self._closing: set[asyncio.Task[None]] = set()
        self._api = api
        self._connect = connect
        self._clock = clock
        self._retry = retry
        limits = settings.limits
        self._accept_slots = asyncio.Semaphore(limits.max_accepts_in_flight)
        self._rate = CallerRateLimiter(
            limits.caller_calls_per_minute, anonymous_per_minute=limits.anonymous_calls_per_minute, clock=clock
        )
        self._live: dict[str, _Live] = {}
        self._recent: OrderedDict[str, _Ended] = OrderedDict()
        #: called with the record when a call arrives (before accept) and when it has ended, exactly once each
        self.on_started: list[FinishedHook] = []
        #: sideband drops and restorations of any call ("disconnect" / "reconnect"), for metrics
        self.on_sideband: Callable[[str], None] | None = None
        self.on_finished: list[FinishedHook] = []
        #: told the call id each time a hangup is to be tried again (metrics)
        self.on_hangup_retry: Callable[[str], None] | None = None
        self.draining = False
        #: the heartbeat once found this process's lease lapsed: REST actions verify the call's fence first
        self.lease_lapsed = False
        #: Twilio's Calls API (#16; set by the app when Twilio is configured): hangs up the Twilio side of calls
        self.twilio_api: TwilioCalls | None = None
        #: Twilio's credentials and this service's public URL (#16; set with ``twilio_api``): parked holds
        self.twilio_credentials: TwilioCredentials | None = None
        #: answering-machine verdicts that came before their call was live here (``machine_detected``)
        self._verdicts: OrderedDict[str, str] = OrderedDict()

    @property
    def live_count(self) -> int:
        return len(self._live)

    @property
    def at_capacity(self) -> bool:
        return len(self._live) >= self._settings.limits.max_concurrent_calls

    def supervisor(self, call_id: str) -> CallSupervisor | None:
        """The supervisor of a live call (None once it ended, or for a rejected call)."""
        entry = self._live.get(call_id)
        return entry.supervisor if entry else None

    def machine_detected(self, call_id: str, answered_by: str) -> bool:
        """Twilio's answering-machine verdict on a call we placed (#16), for its supervisor: posted at once when
        the call is live here (True); else kept (a few, the oldest dropped) in case the call is being started
        here right now (its webhook linked the Twilio call a moment ago), and False. A call live on another replica
        gets it through the store: :func:`~sip_controller.calls.commands.route_machine_detection` posts it as the
        owner's ``machine_detected`` command."""
        supervisor = self.supervisor(call_id)
        if supervisor is not None:
            supervisor.post(MachineDetection(answered_by))
            return True
        self._verdicts[call_id] = answered_by
        while len(self._verdicts) > MAX_KEPT_VERDICTS:
            self._verdicts.popitem(last=False)
        return False

    def live_records(self) -> list[CallRecord]:
        return [e.record for e in self._live.values()]

    def get(self, call_id: str) -> CallRecord | None:
        entry = self._live.get(call_id) or self._recent.get(call_id)
        return entry.record if entry else None

    def records(self) -> list[CallRecord]:
        return [e.record for e in self._live.values()] + [e.record for e in self._recent.values()]

    async def wait_ended(self, call_id: str, timeout: float) -> CallRecord:
        entry = self._live.get(call_id) or self._recent.get(call_id)
        if entry is None:
            raise KeyError(call_id)
        async with asyncio.timeout(timeout):
            await entry.done.wait()
        return entry.record

    def admission(self, incoming: IncomingCall, *, count_caller: bool = True) -> Refusal | None:
        """Why this call cannot be taken now, or None. Counts the call against its caller's rate (unless
        ``count_caller`` is False: a call we placed)."""
        if self.draining:
            return Refusal(UNAVAILABLE, "draining for shutdown")
        if self.at_capacity:
            return Refusal(BUSY, f"at capacity ({self._settings.limits.max_concurrent_calls} live calls)")
        if count_caller and not self._rate.allow(incoming.caller):
            who = "caller" if incoming.caller else "callers without a number (one shared limit)"
            return Refusal(DECLINE, f"{who} over {self._rate.limit_for(incoming.caller)} calls per minute")
        return None

    def _caller_limit(self, incoming: IncomingCall) -> CallerLimit:
        """The per-caller rate across the cluster: the store's sliding window, checked in the admission (the
        per-replica limiter in :meth:`admission` ran first and spares the store the work for a caller it refuses)."""
        return CallerLimit(f"caller:{incoming.caller or ANONYMOUS}", self._rate.limit_for(incoming.caller))

    def _admitted(
        self, admission: Admission, incoming: IncomingCall, *, counted: bool
    ) -> tuple[CallRow | None, Refusal | None]:
        """The row of a call the store admitted, or why the cluster refused it. Raises :class:`Duplicate` (the
        caller's count, when ``counted`` here, given back: it was the same call delivered again) or
        :class:`CallExists` for a call that is not new."""
        if admission.outcome == "admitted" and admission.row is not None:
            return admission.row, None
        if admission.outcome == "rate_limited":
            limit = self._rate.limit_for(incoming.caller)
            who = "caller" if incoming.caller else "callers without a number (one shared limit)"
            return None, Refusal(DECLINE, f"{who} over {limit} calls per minute across the cluster")
        if admission.outcome == "at_capacity":
            limit = self._settings.limits.max_concurrent_calls
            return None, Refusal(BUSY, f"at capacity ({limit} live calls across the cluster)")
        if admission.outcome == "exists":
            raise CallExists(f"call {incoming.call_id} already exists")
        if counted:
            self._rate.forget(incoming.caller)
        raise Duplicate(admission.held or "")

    def _new_call(
        self,
        incoming: IncomingCall,
        name: str,
        *,
        state: str,
        session: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> NewCall:
        received = incoming.received_at.timestamp()
        inputs: dict[str, Any] = {
            "incoming": {
                "call_id": incoming.call_id,
                "webhook_id": incoming.webhook_id,
                "headers": [h.model_dump() for h in incoming.headers],
                "received_at": incoming.received_at.isoformat(),
                "sip_media_security": incoming.sip_media_security,
            },
            "profile": name,
            **(session or {}),
            **(extra or {}),
        }
        deadlines: dict[str, float] = {}
        if session is not None:
            limits = self._settings.limits
            watchdogs = self._settings.profile(name).watchdogs
            deadlines = {"ring": received + limits.ring_budget_s, "max_duration": received + watchdogs.max_duration_s}
        return NewCall(
            call_id=incoming.call_id,
            owner=self.owner,
            profile=name,
            inputs=inputs,
            received_at=received,
            state=state,
            caller=incoming.caller,
            dialed=incoming.dialed,
            deadlines=deadlines,
        )

    async def start(
        self, incoming: IncomingCall, profile_name: str | None = None, *, claims: Sequence[str] = ()
    ) -> Refusal | None:
        """Take charge of a call: write it to the store and supervise it, or reject it with a SIP code (returned)
        when not admitted (here, or across the cluster: capacity and the caller's rate). ``claims``: the intake's
        dedupe keys (``webhook:<id>``, ``call:<call_id>``), claimed for ``limits.dedupe_ttl_s`` in the same store
        transaction as the call row (``Store.admit``: one write on the ring path), or alone for a call refused here.
        Raises :class:`~sip_controller.state.records.Duplicate` when one was already claimed (nothing else
        happens) and :class:`~sip_controller.state.records.CallExists` for a call the store already holds."""
        twilio = await self._correlate(incoming)
        outbound = twilio is not None and twilio.direction == "outbound"
        resumed = await self._resumed_park(twilio)
        if twilio is not None:
            incoming = replace(incoming, bridged=(twilio.from_number, twilio.to_number))
            if outbound and profile_name is None and twilio.profile in self._settings.profiles:
                profile_name = twilio.profile
            if resumed is not None and profile_name is None and resumed.profile in self._settings.profiles:
                profile_name = resumed.profile
        name = profile_name or routing.choose_profile(self._settings, incoming)
        record = CallRecord(
            call_id=incoming.call_id,
            profile=name,
            received_at=incoming.received_at,
            caller=incoming.caller,
            dialed=incoming.dialed,
            twilio_call_sid=twilio.call_sid if twilio is not None else incoming.header("X-Twilio-CallSid"),
            twilio=twilio_part(twilio) if twilio is not None else None,
            outbound={"id": twilio.id, "variables": dict(twilio.variables)} if outbound and twilio else None,
        )
        if resumed is not None:  # the next leg of a parked call (#16): its report is the whole call's
            record.earlier_legs = list(resumed.documents)
            record.park_spells = list(resumed.spells)
            record.mark(0.0, f"leg {len(resumed.documents) + 1}: the call goes on after a parked hold")
            if not resumed.documents:
                record.errors.append("the reports of the legs before the hold could not be read: this report covers "
                                     "this leg only")  # fmt: skip
        if twilio is None and incoming.header(CORRELATION_HEADER) is not None:
            record.errors.append(f"{CORRELATION_HEADER} matches no Twilio call of ours")
        row: CallRow | None = None
        # a call we placed is not screened or rate-limited by its caller ID (our own number): capacity only
        counted = not outbound and resumed is None  # a parked call's next leg is not a new caller
        refusal = None if not counted else routing.screen_caller(self._settings, incoming)
        # a parked call's next leg comes in past capacity: a person is on the line, and the call was counted then
        if resumed is None or self.draining:
            refusal = refusal or self.admission(incoming, count_caller=counted)
        if refusal is None:
            profile = self._settings.profile(name)
            instructions = templates.render(
                profile.instructions,
                profile=name,
                timezone=profile.timezone,
                caller=incoming.caller,
                dialed=incoming.dialed,
                header=incoming.header,
                max_chars=profile.template_value_max_chars,
                now=incoming.received_at,
                variables=twilio.variables if outbound and twilio is not None else None,
            )
            if resumed is not None:
                instructions = parking.resumed_instructions(instructions, reason=resumed.reason)
            accept_body = session.accept_body(profile, instructions=instructions)
            new_call = self._new_call(
                incoming, name, state="received",
                session={"instructions": instructions, "accept_body": accept_body, **twilio_inputs(record),
                         **parking.leg_inputs(record)},
            )  # fmt: skip
            reports = self._settings.reports
            admission = await self._store.admit(
                claims,
                ttl_s=self._settings.limits.dedupe_ttl_s,
                call=new_call,
                max_live=None if resumed is not None else self._settings.limits.max_concurrent_calls,
                caller=None if not counted else self._caller_limit(incoming),
                # a parked call's next leg: call.started went out with its first leg
                outbox=[] if resumed is not None else started_items(record, reports, at=self._wall_clock()),
            )
            row, refusal = self._admitted(admission, incoming, counted=counted)
        elif claims:  # refused here (nothing counted): the claims alone, so a redelivery is not rejected twice
            claimed = await self._store.admit(claims, ttl_s=self._settings.limits.dedupe_ttl_s)
            if claimed.outcome == "duplicate":
                raise Duplicate(claimed.held or "")
        self._notify(self.on_started, record)
        if refusal is not None:
            record.errors.append(f"rejected: {refusal.reason}")
            task = asyncio.create_task(self._reject(record, refusal.status_code), name=f"{incoming.call_id}:reject")
            rejected = self._new_call(incoming, name, state="rejected", extra=twilio_inputs(record))
            self._track(_Live(None, task, record, new_call=rejected))
            return refusal
        assert row is not None
        opening = parking.OPENING if resumed is not None else None
        context = parking.resumed_context(resumed.documents, resumed.heard) if resumed is not None else ()
        supervisor, journal = self._supervisor(
            row, record, accept_body, started_at=self._clock(), opening=opening, context=context
        )
        supervisor.begin()  # the accept request starts now, not a turn of the loop later
        task = asyncio.create_task(self._run(supervisor), name=f"{incoming.call_id}:call")
        self._track(_Live(supervisor, task, record, journal=journal))
        # Twilio's answering-machine verdict may have come before this call's webhook (#16)
        verdict = self._verdicts.pop(incoming.call_id, None) or (twilio.answered_by if outbound and twilio else None)
        if verdict is None and outbound and twilio is not None and self._detects_machines(name):
            # or between the match above and the call going live: the replica that got it then found the call live
            # nowhere, so only the Twilio call's row holds it (read once more, after the accept has started)
            verdict = await self._verdict_since(twilio.id)
        if verdict is not None:
            supervisor.post(MachineDetection(verdict))
        return None

    def _detects_machines(self, profile_name: str) -> bool:
        profile = self._settings.profiles.get(profile_name)
        return profile is not None and profile.outbound.machine_detection != "off"

    async def _verdict_since(self, twilio_id: str) -> str | None:
        """The answering-machine verdict on the Twilio call's row now; None without one, or the store away."""
        try:
            row = await self._store.get_twilio_call(id=twilio_id)
        except StoreError as exc:
            log.warning("twilio.verdict_read_failed", twilio_id=twilio_id, error=str(exc)[:200])
            return None
        return row.answered_by if row is not None else None

    async def _correlate(self, incoming: IncomingCall) -> TwilioCallRow | None:
        """The Twilio call whose correlation id this call carries in its SIP headers (#16), tied to this call once
        (a second call carrying the same id is not matched); None without a well-formed id of ours. The store
        being away costs the match, not the call."""
        value = incoming.header(CORRELATION_HEADER)
        if value is None:
            return None
        if not well_formed_correlation(value):
            log.warning("twilio.correlation_malformed", call_id=incoming.call_id)
            return None
        try:
            row = await self._store.link_twilio_call(value, incoming.call_id)
        except StoreError as exc:
            log.warning("twilio.correlation_unavailable", call_id=incoming.call_id, error=type(exc).__name__)
            return None
        if row is None:
            log.warning("twilio.correlation_unknown", call_id=incoming.call_id)
        else:
            log.info("twilio.correlated", call_id=incoming.call_id, twilio_id=row.id, direction=row.direction)
        return row

    def finish_unanswered(self, row: TwilioCallRow, reason: EndedReason, *, detail: str | None = None) -> CallRecord:
        """Report a call we placed that never reached OpenAI (``no_answer``, ``busy``, ``failed``, ``canceled``):
        its report and ``call.started``/``call.ended`` like any call's, with the request's id as ``call_id``. The
        caller must have tied the Twilio call to that id first (``link_twilio_call``), so it is reported once."""
        received = datetime.fromtimestamp(row.created_at, UTC)
        profile = row.profile if row.profile in self._settings.profiles else self._settings.default_profile
        record = CallRecord(
            call_id=row.id,
            profile=profile,
            received_at=received,
            caller=row.from_number,
            dialed=row.to_number,
            twilio_call_sid=row.call_sid,
            twilio=twilio_part(row),
            outbound={"id": row.id, "variables": dict(row.variables)},
            state=CallState.ENDED.value,
            ended_reason=reason,
            duration_s=round(max(0.0, self._wall_clock() - row.created_at), 3),
        )
        record.mark(0.0, "twilio: requested")
        record.mark(record.duration_s or 0.0, f"twilio: {row.status}")
        if detail:
            record.errors.append(detail)
        new_call = NewCall(
            call_id=row.id, owner=self.owner, profile=profile, inputs=twilio_inputs(record), received_at=row.created_at,
            state="received", caller=row.from_number, dialed=row.to_number, deadlines={},
        )  # fmt: skip
        self._notify(self.on_started, record)
        task = asyncio.create_task(asyncio.sleep(0), name=f"{row.id}:unanswered")
        self._track(_Live(None, task, record, new_call=new_call))
        log.info("call.ended", **record.summary())
        return record

    def _supervisor(
        self,
        row: CallRow,
        record: CallRecord,
        accept_body: dict[str, Any] | None,
        *,
        started_at: float | None,
        taken: CallRecord | None = None,
        opening: str | None = None,
        context: tuple[str, ...] = (),
    ) -> tuple[CallSupervisor, CallJournal]:
        """The machine, journal (on ``row``'s fence) and supervisor of a call this process supervises."""
        profile = self._settings.profile(row.profile)
        machine = CallMachine(
            call_id=row.call_id,
            profile_name=row.profile,
            profile=profile,
            record=record,
            close_wait_s=self._settings.limits.hangup_close_wait_s,
            accept_body=accept_body,
            today=record.received_at.date(),
            prices=self._settings.pricing.for_model(profile.model),
            transcription_prices=(
                self._settings.pricing.transcription.get(profile.transcription.model) if profile.transcription else None
            ),
            accept_give_up_status=self._settings.limits.accept_give_up_status,
            opening=opening,
            context=context,
        )
        call_id = row.call_id
        journal = CallJournal(
            self._store,
            row.fence,
            received_at=record.received_at,
            wall_clock=self._wall_clock,
            flush_s=self._journal_flush_s,
            on_fenced=lambda: self._fenced_out(call_id),
            taken=taken,
        )
        options = CallOptions(
            ring_budget_s=self._settings.limits.ring_budget_s,
            started_at=started_at,
            accept_slots=self._accept_slots,
            retry=self._retry,
            on_sideband=self.on_sideband,
            journal=journal,
            on_hanging_up=self._hanging_up_hook(journal),
            wall_clock=self._wall_clock,
            may_act=self._may_act(journal),
            end_twilio_call=self._twilio_hangup(record),
            transfer_twilio_call=self._twilio_transfer(record),
            park_twilio_call=self._twilio_park(record),
        )
        return CallSupervisor(machine, self._api, self._connect, clock=self._clock, options=options), journal

    def _twilio_hangup(self, record: CallRecord) -> Callable[[], Awaitable[None]] | None:
        """Hangs up the Twilio side of a call Twilio bridged for us (#16), through Twilio's Calls API."""
        api, sid = self.twilio_api, record.twilio_call_sid
        if api is None or sid is None or record.twilio is None:
            return None

        async def end() -> None:
            await api.update(sid, Status="completed")

        return end

    def _twilio_transfer(self, record: CallRecord) -> Callable[[str], Awaitable[None]] | None:
        """Transfers of a call Twilio bridged for us (#16): Twilio's Calls API redirects the call to TwiML dialling
        the target, rather than OpenAI's ``/refer`` (a SIP REFER to Twilio, which needs ``referUrl`` and a second
        signed round trip; the README says why)."""
        api, sid = self.twilio_api, record.twilio_call_sid
        if api is None or sid is None or record.twilio is None:
            return None

        async def move(target_uri: str) -> None:
            await api.update(sid, Twiml=transfer_to(target_uri))

        return move

    def _twilio_park(self, record: CallRecord) -> Callable[[Park], Awaitable[None]] | None:
        """Parks a call Twilio bridged for us (#16): the park is written to the Twilio call's row first (any replica
        answers what Twilio posts next), then the Calls API moves the call onto TwiML that listens for a person.
        Twilio refusing takes the park back: the call stays on hold mode."""
        api, sid, creds = self.twilio_api, record.twilio_call_sid, self.twilio_credentials
        twilio_id = record.twilio.get("id") if record.twilio is not None else None
        if api is None or sid is None or creds is None or not isinstance(twilio_id, str):
            return None
        store, settings = self._store, self._settings

        async def park(request: Park) -> None:
            state = parking.new_park(
                call_id=record.call_id, earlier=[str(d.get("call_id")) for d in record.earlier_legs],
                spells=record.park_spells, profile=record.profile, park=request, now=self._wall_clock(),
            )  # fmt: skip
            config = settings.profile(record.profile).hold.park
            timeout = config.listen_timeout_s if config is not None else 15
            language = settings.profile(record.profile).transcription
            await store.set_twilio_park(twilio_id, state)
            url = parking.parked_url(creds.public_url, twilio_id, int(state["spell"]))
            twiml = listen_parked(url, timeout_s=timeout, language=language.language if language else None)
            try:
                await api.update(sid, Twiml=twiml)
            except TwilioError as exc:
                # taken back only when Twilio certainly did not move the call: an answer that never came may have
                # moved it, and then the park must be there for Twilio's rounds
                if not exc.ambiguous:
                    with contextlib.suppress(Exception):
                        await store.set_twilio_park(twilio_id, None)
                raise

        return park

    async def _resumed_park(self, twilio: TwilioCallRow | None) -> _Resumed | None:
        """The parked call this OpenAI call goes on with (#16): the Twilio call's park says a person is back and
        the next leg is being bridged. The earlier legs' reports come from the store; one that cannot be read is
        left out (the report says so), never the call: it is still the call's next leg."""
        park = twilio.park if twilio is not None else None
        if not isinstance(park, dict) or park.get("status") != parking.BRIDGING:
            return None
        documents: list[dict[str, Any]] = []
        for leg in park.get("legs") or ():
            document = await self._leg_report(str(leg))
            if document is not None:
                documents.append(document)
        if not documents:  # still the call's next leg (no second call.started, no greeting), reported on its own
            log.error("park.leg_reports_missing", twilio_id=twilio.id if twilio else None)
        spells = [dict(s) for s in park.get("spells") or () if isinstance(s, dict)]
        heard = park.get("heard")
        reason = park.get("reason")
        return _Resumed(
            documents=documents, spells=spells, profile=str(park.get("profile") or ""),
            heard=heard if isinstance(heard, str) else None, reason=reason if isinstance(reason, str) else None,
        )  # fmt: skip

    async def _leg_report(self, call_id: str) -> dict[str, Any] | None:
        """A parked leg's own report, read a few times over a second (the store away for a moment)."""
        for attempt in range(3):
            try:
                document = await self._store.get_report(call_id)
            except StoreError as exc:
                log.warning("park.leg_unavailable", leg=call_id, attempt=attempt + 1, error=type(exc).__name__)
            else:
                if isinstance(document, dict):
                    return document
            if attempt < 2:
                await asyncio.sleep(0.3)
        return None

    async def resume(self, row: CallRow, entries: Sequence[StoredEntry]) -> None:
        """Supervise a call this process has just taken over (``row``: its new owner and epoch, from
        ``Store.take_over``; ``entries``: what it recorded): rebuild its record, record the takeover (an entry,
        and ``takeovers`` on the report), re-attach the sideband by call_id and go on from there."""
        record = rebuild_record(row, entries)
        now = self._wall_clock()
        takeover = {
            "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "gap_s": None if row.takeover_gap_s is None else round(row.takeover_gap_s, 3),
            "by": self.owner,
            "epoch": row.epoch,
        }
        await self._store.append(row.fence, [Entry(TAKEOVER, now, takeover)])
        taken = copy.deepcopy(record)
        record.takeovers.append(takeover)
        accept_body = row.inputs.get("accept_body")
        supervisor, journal = self._supervisor(
            row, record, accept_body if isinstance(accept_body, dict) else None, started_at=None, taken=taken
        )
        ending = pending_reason(record) if row.state == CallState.ENDING.value else None
        supervisor.resume(elapsed_s=max(0.0, now - row.received_at), ending=ending)
        task = asyncio.create_task(self._run(supervisor), name=f"{row.call_id}:call")
        self._track(_Live(supervisor, task, record, journal=journal))

    def _may_act(self, journal: CallJournal) -> Callable[[], Awaitable[bool]]:
        """``CallOptions.may_act``: once this process's lease was found lapsed, the call's fence is checked in the
        store before each REST action (another replica may own the call now)."""

        async def check() -> bool:
            if journal.fenced:
                return False
            if not self.lease_lapsed:
                return True
            try:
                await self._store.verify(journal.fence)
            except Fenced as exc:
                journal.fenced_by(exc)
                return False
            except Exception as exc:  # the store away: the lease was renewed since, so the call is most likely ours
                log.warning("call.verify_failed", call_id=journal.fence.call_id, error=type(exc).__name__)
            return True

        return check

    async def lease_found_lapsed(self) -> None:
        """The heartbeat found this process's lease had lapsed: from now on every REST action checks the call's
        fence first, and the calls another replica took over meanwhile are dropped at once (no report, no REST
        action: the new owner has them)."""
        self.lease_lapsed = True
        for entry in list(self._live.values()):
            journal = entry.journal
            if journal is None or journal.fenced or journal.closed:
                continue
            try:
                await self._store.verify(journal.fence)
            except Fenced as exc:
                journal.fenced_by(exc)

    def _hanging_up_hook(self, journal: CallJournal) -> Callable[[str, float], Awaitable[None]]:
        """``CallOptions.on_hanging_up``: a hangup failed and is tried again at ``next_try_at``. The store learns
        it (under the call's fence) so that any replica finishes the hangup if this process goes; counted."""

        async def hook(call_id: str, next_try_at: float) -> None:
            if self.on_hangup_retry is not None:
                self.on_hangup_retry(call_id)
            if journal.fenced:
                return
            try:
                await self._store.update_call(journal.fence, state=HANGING_UP, wake_at=next_try_at)
            except Fenced as exc:
                journal.fenced_by(exc)

        return hook

    def _fenced_out(self, call_id: str) -> None:
        """Another process owns the call now (or it is finished): stop acting for it at once."""
        entry = self._live.get(call_id)
        if entry is not None:
            entry.task.cancel()

    def _track(self, entry: _Live) -> None:
        self._live[entry.record.call_id] = entry
        entry.task.add_done_callback(lambda _t: self._finished(entry))

    async def _run(self, supervisor: CallSupervisor) -> None:
        await supervisor.run()

    async def _reject(self, record: CallRecord, status_code: int) -> None:
        record.mark(0.0, f"rejected: SIP {status_code}")
        try:
            await with_quick_retries(lambda: self._api.reject(record.call_id, status_code), self._retry)
        except OpenAIError as exc:
            record.errors.append(f"reject failed: {exc}")
        record.state = CallState.REJECTED.value
        record.ended_reason = "rejected"
        record.duration_s = 0.0
        log.info("call.ended", **record.summary())

    def _finished(self, entry: _Live) -> None:
        call_id = entry.record.call_id
        self._live.pop(call_id, None)
        if entry.supervisor is not None:
            entry.supervisor.cancel_tasks()
        if entry.task.cancelled() and entry.record.ended_reason is None:
            entry.record.ended_reason = "shutdown"
        keep = self._settings.limits.recent_calls
        if keep:
            self._recent[call_id] = _Ended(entry.record, entry.done)
            while len(self._recent) > keep:
                self._recent.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._close_out(entry), name=f"{call_id}:finish")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_out(self, entry: _Live) -> None:
        """Write the finished call (report and outbox in one transaction), then tell the hooks."""
        try:
            await self._write_finish(entry)
        except Exception:
            log.exception("call.finish_failed", call_id=entry.record.call_id)
        finally:
            entry.done.set()
            self._notify(self.on_finished, entry.record)

    async def _write_finish(self, entry: _Live) -> None:
        record = entry.record
        # the process stops supervising a call whose hangup OpenAI has not confirmed (a drain that has to exit):
        # the call stays live in hanging_up, for the hangup janitor of any replica to finish and report
        left_hanging = record.state == HANGING_UP and record.hangup_confirmed is False and entry.journal is not None
        finished_states = (CallState.ENDED.value, CallState.REJECTED.value, CallState.FAILED.value)
        if not left_hanging and record.state not in finished_states:
            record.state = CallState.ENDED.value if entry.supervisor is not None else CallState.REJECTED.value
        entries: list[Entry] = []
        fence: Fence | None = None
        if entry.journal is not None:
            entries = await entry.journal.take(record)
            if entry.journal.fenced:
                log.warning("call.not_reported", call_id=record.call_id, why="fenced")
                return
            fence = entry.journal.fence
        await self._refresh_twilio(record)
        now = self._wall_clock()
        reports = self._settings.reports
        document, outbox = ended_items(record, reports, at=now)
        outbox += analysis_requests(self._settings, document)  # #17: its analysis, asked in the same transaction
        # parked holds (#16): a parked leg keeps its own report and sends nothing (the call goes on); the last leg's
        # report is the whole call's, written on the first leg's row (the call's identity) and sent from there
        parked_leg = record.ended_reason == "parked"
        continued = bool(record.earlier_legs) and not parked_leg and not left_hanging
        own = parking.leg_document(record, mask_caller=reports.mask_caller) if parked_leg or continued else document
        report = own if parked_leg else document  # a last leg whose first leg could not be closed carries the call
        if parked_leg:
            outbox = []
        first_closed = False
        for attempt in range(5):
            try:
                if fence is None:  # a call that never lived (rejected): its row written finished, one write (#18)
                    assert entry.new_call is not None
                    await self._store.record_finished(
                        replace(entry.new_call, state=record.state, cost_usd=record.cost_usd),
                        ended_reason=record.ended_reason or "unknown",
                        report=document,
                        outbox=[*started_items(record, reports, at=now), *outbox],
                        entries=entries,
                        ended_at=now,
                    )
                    return
                if left_hanging:
                    await leave_hanging_up(self._store, fence, document, wake_at=now, entries=entries, at=now)
                    log.warning("call.left_hanging_up", call_id=record.call_id)
                    return
                ended_reason: str = record.ended_reason or "unknown"
                first_closed = first_closed or (continued and await self._close_first_leg(record, document, outbox))
                if first_closed:  # kept across a retry of the write below: the close is done once
                    ended_reason, outbox, report = MERGED, [], own
                await self._store.finish_call(
                    fence,
                    state=record.state,
                    ended_reason=ended_reason,
                    report=report,
                    outbox=outbox,
                    entries=entries,
                    cost_usd=record.cost_usd,
                    ended_at=now,
                )
                if parked_leg:
                    await self._closed_while_written(record)
                else:
                    await self._recording_since(record, document)
            except Fenced as exc:
                if entry.journal is not None:
                    entry.journal.fenced_by(exc)
                log.warning("call.not_reported", call_id=record.call_id, why=exc.reason)
                return
            except StoreError:
                raise  # refused for good (e.g. the row already exists): logged by the caller
            except Exception as exc:  # the database away for a moment
                log.warning("call.finish_retry", call_id=record.call_id, attempt=attempt + 1, error=type(exc).__name__)
                await asyncio.sleep(0.2 * 2**attempt)
            else:
                return
        log.error("call.finish_failed", call_id=record.call_id, why="the store did not answer")

    async def _close_first_leg(self, record: CallRecord, document: dict[str, Any], outbox: list[OutboxItem]) -> bool:
        """The whole call's report, on its first leg's row, with its deliveries, in one transaction (#16). False
        when that row is not a parked leg (gone, or closed before): this leg's row then carries the report."""
        first = str(document.get("call_id") or "")
        if not first or first == record.call_id:
            return False
        cost = document.get("cost_usd")
        closed = await self._store.close_parked(
            first, ended_reason=record.ended_reason or "unknown", report=document, outbox=outbox,
            cost_usd=float(cost) if isinstance(cost, int | float) else None, ended_at=self._wall_clock(),
        )  # fmt: skip
        if closed:
            return True
        # closed before by this very leg (a write that failed after it, or a process that died in between, #13)
        report = await self._store.get_report(first)
        legs = report.get("legs") if isinstance(report, dict) else None
        if isinstance(legs, list) and any(isinstance(g, dict) and g.get("call_id") == record.call_id for g in legs):
            return True
        log.warning("park.first_leg_not_parked", call_id=record.call_id, first=first)
        return False

    async def _closed_while_written(self, record: CallRecord) -> None:
        """A parked leg just written (#16): its Twilio call may have ended while it was (the far side hung up right
        after the redirect), and the status callback then found no report to close the call with: close it now.
        Best effort: the store away is logged (the call's report waits for the next final callback)."""
        try:
            row = await twilio_row(self._store, record.twilio)
            if row is not None and row.final:
                await close_if_parked(self._store, self._settings, row, now=self._wall_clock())
        except Exception as exc:  # the store's or its driver's
            log.warning("park.close_check_failed", call_id=record.call_id, error=type(exc).__name__)

    async def _refresh_twilio(self, record: CallRecord) -> None:
        """A bridged call's Twilio side as the status callbacks left it, for its report (best effort)."""
        try:
            row = await twilio_row(self._store, record.twilio)
        except Exception as exc:  # the store away: the report keeps what was known at the start
            log.warning("twilio.refresh_failed", call_id=record.call_id, error=type(exc).__name__)
            return
        if row is not None:
            record.twilio = twilio_part(row)
            record.recording = recording_of(row.events) or record.recording

    async def _recording_since(self, record: CallRecord, report: Mapping[str, Any]) -> None:
        """A recording callback that came in while the report was being written (#16): the report lacks it, so
        it goes out as a late ``call.recording``. The callback's route checks the other way round (the report
        stored before its recording), so one of the two sends it; the outbox keys keep it to one. The hangup janitor
        does the same for the calls it finishes (``calls/recordings.py``)."""
        # the report's call: a parked call's is its first leg's (#16)
        call_id = str(report.get("call_id") or record.call_id)
        await recording_since(self._store, call_id, record.twilio, report, self.late_recording)

    async def late_recording(self, call_id: str, recording: Mapping[str, Any]) -> bool:
        """Twilio's recording of a call whose report is already stored without it (#16): a ``call.recording``
        event through the outbox (once per destination), and the stored report gets it. False when the report is
        not stored yet (the recording goes into it) or already has this recording. Raises :class:`StoreError` when
        the store fails."""
        report = await self._store.get_report(call_id)
        # a parked leg's report (#16) is not the call's: the call's, when written, reads the recording from the row
        if report is None or report.get("recording") == dict(recording) or report.get("ended_reason") == "parked":
            return False
        document = recording_document(report, recording)
        added = await self._store.enqueue(recording_items(document, self._settings.reports, at=self._wall_clock()))
        # and the stored report gets it too (the call history's page links it); after the enqueue: a retried
        # callback finds the report without it and enqueues again, which the outbox keys make nothing
        await self._store.merge_report(call_id, {"recording": dict(recording)})
        log.info("twilio.recording_late", call_id=call_id, enqueued=added)
        return True

    @staticmethod
    def _notify(hooks: list[FinishedHook], record: CallRecord) -> None:
        for hook in hooks:
            try:
                hook(record)
            except Exception:
                log.exception("registry.hook_failed", call_id=record.call_id)

    async def drain(self, wait_s: float, wrap_up_s: float) -> None:
        """SIGTERM: take no new calls; let live ones end by themselves for up to ``wait_s``; then wrap up
        and hang up the rest (``shutdown``), cancelling whatever is still running after ``wrap_up_s``."""
        self.draining = True
        log.info("registry.draining", live_calls=self.live_count, wait_s=wait_s)
        tasks = [e.task for e in self._live.values()]
        if tasks and wait_s > 0:
            await asyncio.wait(tasks, timeout=wait_s)
        await self.shutdown(wrap_up_s)
        log.info("registry.drained")

    async def shutdown(self, timeout: float, hangup_grace_s: float = 5.0) -> None:
        """Ask every live call to wrap up; after ``timeout`` seconds hang up the calls still going at once and give
        their hangups ``hangup_grace_s`` to be confirmed (a failed one is retried meanwhile); then cancel whatever is
        left. A call cancelled before OpenAI confirmed its hangup comes out ``hanging_up`` with ``hangup_confirmed``
        False (never a ``shutdown`` of a call that is over): the hangup janitor (``calls/hangups.py``) finishes it."""
        self.draining = True
        entries = list(self._live.values())
        for entry in entries:
            if entry.supervisor is not None:
                entry.supervisor.post(Shutdown())
        if not entries:
            await self.finished_written(timeout)
            return
        _done, pending = await asyncio.wait([e.task for e in entries], timeout=timeout)
        if pending and hangup_grace_s > 0:
            for entry in entries:
                if entry.task in pending and entry.supervisor is not None:
                    entry.supervisor.post(Shutdown(now=True))
            _done, pending = await asyncio.wait(pending, timeout=hangup_grace_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.finished_written(timeout)

    async def finished_written(self, timeout: float) -> None:
        """Wait (up to ``timeout``) until the ended calls' reports are in the store."""
        await asyncio.sleep(0)  # the done callbacks of tasks that just ended schedule their writes
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=timeout)
