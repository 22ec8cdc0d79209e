"""The chaos soak against real ``sipctl serve`` processes: ``sipctl soak --replicas N [--kill]``.

The calls, their faults and the invariants are those of :mod:`.soak`; here the controllers are N child processes
(:class:`~.replicas.Replicas`) sharing one store: a SQLite file in a temporary folder, or PostgreSQL (``--database-url``
or ``SIPCTL_DATABASE_URL``) in a throwaway schema created for the soak and dropped after it. The simulator's
webhooks (late duplicates and redeliveries too) go through a loopback load balancer
(:class:`~.replicas.WebhookFront`) that spreads them round-robin over the live replicas. Reports go to a loopback
report sink (:class:`~.replicas.ReportSink`).

With ``kill``, once about a third of the calls are placed, placing pauses until every live call is attached and
none is in its last turn; then the replica with the most live calls is SIGKILLed and restarted a moment later,
and placing goes on. The other replicas (or the restarted process, with one replica) take its calls over.

What each invariant is judged from, with subprocesses:

- ended exactly once, reports written: the ``call.ended`` deliveries the sink received, deduplicated by
  ``webhook-id`` (a redelivery is not a second end): one per call, with an ``ended_reason``. The single-process
  soak also counts the controller's ``on_finished`` callbacks; there is no such hook across processes, and a
  second finish by another process would not show as a second report either (the outbox key is one per call and
  the store fences a finish by a process that lost the call), so "ended twice" here counts calls with more than one
  distinct ``call.ended`` delivery only;
- double accepts, orphans, accepts after the end, sim calls not ended: the simulator's records, as in-process;
- webhook 5xx and unanswered: the statuses the simulator saw through the load balancer (a replica's own answer;
  503 when no replica came up within its hold time);
- calls taken over: the reports' ``takeovers``; the ``call.taken_over`` log records of every replica beside it;
- takeover latency: from the kill to the sideband's re-attach (``SimCall.sideband_attached_at``), simulator clock.

Not judged: a kill while a call is ringing or in the middle of a turn. The kill waits (bounded) for a quiet moment,
because the events of a turn in flight in a dead sideband are lost with it (the Realtime API does not replay
them), and a lost ``end_call`` leaves the caller on the line however well the call is taken over; the table says
when no quiet moment came. Every fault mix of :data:`.soak.FAULT_MIX` is injected by the simulator and is judged
the same way as in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import asyncpg
import structlog

from sip_controller.simulator import CallSpec, SimCall, Simulator, new_webhook_secret
from sip_controller.simulator.replicas import Replicas, ReportSink, WebhookFront, endpoints_env
from sip_controller.simulator.soak import FIRST_LINE, SETTLE_S, SoakResult, _tally, plan

log = structlog.get_logger("sip_controller.simulator.soak_replicas")

#: the store's lease and heartbeat in the replicas (the defaults are 6 s and 2 s): a takeover takes seconds
LEASE_S = 1.5
HEARTBEAT_S = 0.5
#: nominal seconds of silence in each call between its first exchange and its last turn (x the time scale: 5 s
#: of real time at 0.05), so that many calls are live, and quiet, when the replica dies
QUIET = 100.0
#: nominal seconds the caller stays on the line at most: the quiet, a takeover and the turns fit well inside
MAX_CALL_SECONDS = QUIET + 300.0
#: how long placing may pause for a quiet moment to kill in (seconds)
KILL_WAIT_S = 20.0
#: from the kill to the restart of the same slot (seconds)
RESTART_AFTER_S = 0.5
#: a call within this long of its last turn (seconds) is not quiet any more
LAST_TURN_MARGIN_S = 1.0
#: the answer to the first line has this long to play before the quiet step begins (seconds)
ANSWER_S = 0.5
MAX_REPLICAS = 8
CONNECT_TIMEOUT_S = 3.0
#: where the replicas' PostgreSQL comes from when ``--database-url`` is not given
DATABASE_URL_ENV = "SIPCTL_DATABASE_URL"


def replica_env(calls: int, concurrency: int, config: Path | None) -> dict[str, str]:
    """The settings a soak needs in each replica (as :func:`.soak.soak_settings` does in-process): no per-caller
    rate limit, room for every call at once and for every call's record; the operator's config file if given
    (``--config`` or ``SIPCTL_CONFIG``: the replicas' environment has none of the caller's other ``SIPCTL_``
    variables)."""
    env = {
        "SIPCTL_LIMITS__CALLER_CALLS_PER_MINUTE": "0",
        "SIPCTL_LIMITS__MAX_CONCURRENT_CALLS": str(max(100, 4 * concurrency)),
        "SIPCTL_LIMITS__RECENT_CALLS": str(max(1000, calls)),
    }
    config = config or (Path(os.environ["SIPCTL_CONFIG"]) if os.environ.get("SIPCTL_CONFIG") else None)
    if config is not None:
        env["SIPCTL_CONFIG"] = str(config.resolve())
    return env


def server_of(url: str) -> str:
    """``host:port/database`` of a PostgreSQL URL: never its user or password."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}/{parts.path.lstrip('/') or '(default)'}"
    except ValueError:
        return "(an unparsable URL)"


@contextlib.asynccontextmanager
async def _store(database_url: str | None) -> AsyncIterator[tuple[str | None, str]]:
    """The replicas' database URL (None: the SQLite file) and how the table names the store. On PostgreSQL a new
    schema, selected by ``?search_path=`` on the URL so the replicas' migrations land in it, dropped afterwards
    with everything in it (a shared database is left as it was)."""
    if database_url is None:
        yield None, "SQLite file, shared"
        return
    schema = f"sipctl_soak_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ConnectionError(f"no PostgreSQL answered at {server_of(database_url)}: {type(exc).__name__}") from exc
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            url = f"{database_url}{'&' if '?' in database_url else '?'}search_path={schema}"
            yield url, f"PostgreSQL {server_of(database_url)}, schema {schema} (dropped after)"
        finally:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', timeout=30)
    finally:
        await admin.close()


async def _until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` (something other processes change) until true or ``timeout`` seconds; its last value."""
    until = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > until:
            return False
        await asyncio.sleep(0.05)
    return True


def _quiet(call: SimCall, now: float, quiet_s: float) -> bool:
    """Whether a SIGKILL now cannot cost this call a turn: it has ended, or it is attached and not near its last
    turn (only a goodbye's ``end_call`` in flight ends a call through the sideband)."""
    if call.is_ended:
        return True
    if not call.sideband_attached_at:
        return False  # ringing or being accepted
    if not call.name.endswith("-goodbye"):
        return True  # its last step is the caller's hang-up, which waits for a sideband
    said = next((t["t"] for t in call.transcripts if t.get("role") == "caller" and t.get("text") == FIRST_LINE), None)
    if said is None:
        return False  # in its greeting or first exchange: wait for the quiet step
    said_at = float(said)
    return said_at + ANSWER_S <= now <= said_at + quiet_s - LAST_TURN_MARGIN_S


async def run_soak_replicas(
    *,
    replicas: int,
    kill: bool = False,
    calls: int = 100,
    fault_rate: float = 0.2,
    seed: int = 1,
    concurrency: int = 25,
    time_scale: float = 0.05,
    max_wall_s: float = 300.0,
    database_url: str | None = None,
    config: Path | None = None,
    reports: Path | None = None,
    workdir: Path | None = None,
    out: TextIO | None = None,
) -> SoakResult:
    """Run the soak against ``replicas`` ``sipctl serve`` processes (one SIGKILLed and restarted with ``kill``)
    and return its result (printed to ``out`` when given). ``database_url``: PostgreSQL (a throwaway schema is
    created in its database); None: a SQLite file in ``workdir`` (default: a temporary folder)."""
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"replicas must be 1..{MAX_REPLICAS}")
    if not 1 <= calls <= 100_000:
        raise ValueError("calls must be 1..100000")
    if not 0 <= fault_rate <= 1:
        raise ValueError("fault_rate must be 0..1")
    if not 1 <= concurrency <= 1000:
        raise ValueError("concurrency must be 1..1000")
    if max_wall_s <= 0:
        raise ValueError("max_wall must be positive")
    with contextlib.ExitStack() as folders:
        if workdir is None:
            workdir = Path(folders.enter_context(tempfile.TemporaryDirectory(prefix="sipctl-soak-")))
        result = await _run(
            replicas=replicas, kill=kill, calls=calls, fault_rate=fault_rate, seed=seed, concurrency=concurrency,
            time_scale=time_scale, max_wall_s=max_wall_s, database_url=database_url, config=config,
            reports=reports, workdir=workdir,
        )  # fmt: skip
    if out is not None:
        print(result.table(), file=out)
    return result


async def _run(
    *,
    replicas: int,
    kill: bool,
    calls: int,
    fault_rate: float,
    seed: int,
    concurrency: int,
    time_scale: float,
    max_wall_s: float,
    database_url: str | None,
    config: Path | None,
    reports: Path | None,
    workdir: Path,
) -> SoakResult:
    quiet_s = QUIET * time_scale
    planned = plan(calls, fault_rate, seed, quiet=QUIET, max_call_seconds=MAX_CALL_SECONDS)
    started = time.monotonic()
    deadline = started + max_wall_s
    sims: dict[str, SimCall] = {}
    secret = new_webhook_secret()
    timed_out = False
    kill_report: dict[str, Any] = {"kills": 0, "quiet": True, "at": None}
    victims: set[str] = set()
    env_extra = replica_env(calls, concurrency, config)

    async with (
        _store(database_url) as (url, store_name),
        Simulator(webhook_secret=secret, time_scale=time_scale) as sim,
        ReportSink() as sink,
    ):
        cluster = Replicas(
            replicas, workdir=workdir / "cluster", api_base=sim.base_url, api_key=sim.api_key,
            webhook_secret=secret, database_url=url, env={**endpoints_env([sink.url]), **env_extra},
            lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S,
        )  # fmt: skip
        async with cluster, WebhookFront(cluster) as front:
            sim.webhook_url = front.url
            log.info("soak.replicas_up", replicas=replicas, store=store_name)
            slots = asyncio.Semaphore(concurrency)
            placing = asyncio.Event()
            placing.set()
            placed = 0
            a_third = asyncio.Event()
            per_call = max(30.0, 2 * MAX_CALL_SECONDS * time_scale + 15.0)

            async def one(spec: CallSpec) -> None:
                nonlocal placed
                async with slots:
                    await placing.wait()
                    sim_call = await sim.place_call(spec)
                    sims[spec.name] = sim_call
                    placed += 1
                    if placed >= max(1, calls // 3):
                        a_third.set()
                    with contextlib.suppress(TimeoutError):
                        await sim.wait_ended(sim_call.call_id, per_call)

            async def killer() -> None:
                await a_third.wait()
                placing.clear()  # pause: let the live calls settle into their quiet step
                kill_report["quiet"] = await _until(
                    lambda: all(_quiet(c, sim.now(), quiet_s) for c in sims.values()), KILL_WAIT_S
                )
                live = {c.call_id for c in sims.values() if not c.is_ended}
                on_slot = [sum(1 for cid in live if front.owners.get(cid) == r.index) for r in cluster.replicas]
                victim = max(range(replicas), key=lambda i: on_slot[i])
                await cluster.kill(victim)
                kill_report.update(kills=1, at=sim.now())
                victims.update(cid for cid in live if front.owners.get(cid) == victim)
                log.warning("soak.replica_killed", replica=victim, live_calls=on_slot[victim])
                await asyncio.sleep(RESTART_AFTER_S)
                await cluster.start(victim)
                log.info("soak.replica_restarted", replica=victim)
                placing.set()

            async def everything() -> None:
                work = [asyncio.create_task(one(spec)) for spec, _ in planned]
                if kill:
                    work.append(asyncio.create_task(killer()))
                try:
                    await asyncio.gather(*work)
                finally:
                    for task in work:
                        task.cancel()
                    await asyncio.gather(*work, return_exceptions=True)

            try:
                async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                    await everything()
            except TimeoutError:
                timed_out = True
            await sim.settle(SETTLE_S)
            wanted = {c.call_id for c in sims.values()}
            await _until(lambda: wanted <= set(sink.ended_by_call()), 2 * SETTLE_S)
            takeover_logs = len(cluster.events("call.taken_over"))
            failovers, held = front.failovers, front.held

    ended = sink.ended_by_call()
    finished = {cid: [d.data.get("ended_reason") for d in ds] for cid, ds in ended.items()}
    written = {cid: ds[0].data for cid, ds in ended.items()}
    result = _tally(planned, sims, finished, written, seed, fault_rate, time.monotonic() - started)
    result.timed_out = timed_out
    result.sim_task_errors = len(sim.task_errors)
    result.replicas, result.store = replicas, store_name
    result.kills, result.calls_on_victim = kill_report["kills"], len(victims)
    result.kill_at_quiet = kill_report["quiet"]
    result.takeover_logs, result.webhook_failovers, result.webhook_held = takeover_logs, failovers, held
    killed_at: float | None = kill_report["at"]
    for call in sims.values():
        report = written.get(call.call_id)
        if not report or not report.get("takeovers"):
            continue
        result.taken_over.append(call.call_id)
        if killed_at is not None and call.call_id in victims:
            after = [t for t in call.sideband_attached_at if t >= killed_at]
            if after:
                result.takeover_latencies.append(round(after[0] - killed_at, 3))
    if reports is not None:
        with reports.open("w", encoding="utf-8") as fh:
            for report in written.values():
                fh.write(json.dumps(report) + "\n")
    log.info("soak.replicas_done", ok=result.ok, wall_s=result.wall_s)
    return result


def database_url_from(explicit: str | None) -> str | None:
    """The PostgreSQL URL of ``--database-url``, else ``SIPCTL_DATABASE_URL``, else None (the SQLite file)."""
    return explicit or os.environ.get(DATABASE_URL_ENV, "").strip() or None
