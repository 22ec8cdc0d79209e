"""Real ``sipctl serve`` processes on one store, to kill and restart: the crash test, ``sipctl soak --replicas N
--kill`` and the demo's taken-over call use it.

Each replica is a child process on its own loopback port, started with a clean environment (nothing of the
caller's ``SIPCTL_``/``OPENAI_`` variables), logging JSON to a file of its own that every incarnation appends to,
so :meth:`Replicas.events` reads the whole history of the cluster after a SIGKILL. They share the store: one
SQLite file in the work folder, or PostgreSQL when ``database_url`` is given (put ``?search_path=<schema>`` on it
to keep a test in a schema of its own). Webhooks are spread over the live replicas round-robin
(:meth:`Replicas.next_webhook_url`), as a load balancer in front of them would.

:class:`ReportSink` is the operator's endpoint: a loopback server that records every ``call.started`` and
``call.ended`` delivery, so the caller can check that each call was reported, and reported once.

:class:`WebhookFront` is the load balancer: one loopback URL for the simulator's webhooks (late duplicates and
redeliveries included), forwarded round-robin to the live replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sip_controller.service.loopback import RunningServer, bind_socket, serve


def free_port() -> int:
    sock = bind_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def clean_env() -> dict[str, str]:
    """This process's environment without anything that would configure a controller from outside."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SIPCTL_", "OPENAI_"))}


@dataclass
class Replica:
    """One slot of the cluster: its port stays the same across restarts; ``proc`` is the current incarnation."""

    index: int
    port: int
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    incarnations: int = 0
    #: ``time.time()`` of each SIGKILL of this slot
    killed_at: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"replica-{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhooks/openai"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Replicas:
    """``count`` controllers on one store; ``async with`` starts them and stops them all (SIGTERM, then SIGKILL).

    ``env`` is added to each replica's environment (settings as ``SIPCTL_…`` variables); the store's lease and
    heartbeat default to short ones (``lease_s``/``heartbeat_s``) so that a takeover takes seconds.
    """

    def __init__(
        self,
        count: int,
        *,
        workdir: Path,
        api_base: str,
        api_key: str,
        webhook_secret: str,
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
        lease_s: float = 1.5,
        heartbeat_s: float = 0.5,
        ready_timeout_s: float = 30.0,
    ) -> None:
        if count < 1:
            raise ValueError("count: at least one replica")
        self.workdir = workdir
        self.database_url = database_url
        self.ready_timeout_s = ready_timeout_s
        self._env = {
            **clean_env(),
            "OPENAI_API_KEY": api_key,
            "OPENAI_WEBHOOK_SECRET": webhook_secret,
            "OPENAI_BASE_URL": api_base,
            "SIPCTL_LOG_FORMAT": "json",
            "SIPCTL_STATE__PATH": str(workdir / "sipctl-state.db"),
            "SIPCTL_STATE__LEASE_S": f"{lease_s:g}",
            "SIPCTL_STATE__HEARTBEAT_S": f"{heartbeat_s:g}",
            "SIPCTL_LIMITS__DRAIN_TIMEOUT_S": "0",
            "SIPCTL_LIMITS__DRAIN_WRAP_UP_S": "3",
            **(env or {}),
        }
        if database_url is not None:
            self._env["SIPCTL_DATABASE_URL"] = database_url
        self.replicas = [
            Replica(index=i, port=free_port(), log_path=workdir / f"replica-{i}.log") for i in range(count)
        ]
        self._turn = itertools.count()
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._client = httpx.AsyncClient(timeout=2.0)
        try:
            # one at a time: the first applies the migrations, the others find them applied
            for replica in self.replicas:
                await self.start(replica.index)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await asyncio.gather(*(self.stop(r.index) for r in self.replicas))
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- one replica ------------------------------------------------------------------------------------------

    async def start(self, index: int) -> Replica:
        """Start (or restart) slot ``index`` and wait until it answers ``/readyz`` 200."""
        replica = self.replicas[index]
        if replica.alive:
            raise RuntimeError(f"{replica.name} is already running")
        with replica.log_path.open("ab") as log:
            replica.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sip_controller", "serve", "--host", "127.0.0.1", "--port", str(replica.port),
                cwd=self.workdir, env=self._env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )
        replica.incarnations += 1
        await self._wait_ready(replica)
        return replica

    async def _wait_ready(self, replica: Replica) -> None:
        assert self._client is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if not replica.alive:
                raise RuntimeError(f"{replica.name} exited during start-up; its log:\n{self.log_tail(replica.index)}")
            with contextlib.suppress(httpx.TransportError):
                if (await self._client.get(f"{replica.url}/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{replica.name} not ready after {self.ready_timeout_s:g} s; its log:\n"
                    f"{self.log_tail(replica.index)}"
                )
            await asyncio.sleep(0.05)

    async def kill(self, index: int) -> float:
        """SIGKILL slot ``index`` (no drain, no goodbye: an OOM kill or a lost node); the wall time of the kill."""
        replica = self.replicas[index]
        if replica.proc is None or not replica.alive:
            raise RuntimeError(f"{replica.name} is not running")
        replica.proc.send_signal(signal.SIGKILL)
        at = time.time()
        replica.killed_at.append(at)
        await replica.proc.wait()
        return at

    async def stop(self, index: int, timeout_s: float = 20.0) -> int | None:
        """SIGTERM slot ``index`` (a drain), SIGKILL after ``timeout_s`` (a SIGUSR1 first: the replica logs what its
        tasks wait on, ``serve.tasks``); its exit code (None if not running)."""
        proc = self.replicas[index].proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout_s):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGUSR1)
                    await asyncio.sleep(0.5)
                    proc.kill()
                await proc.wait()
        return proc.returncode

    # ---- the cluster ------------------------------------------------------------------------------------------

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def next_webhook_url(self) -> str:
        """The next live replica's webhook URL, round-robin (what a load balancer in front of them does)."""
        live = self.alive()
        if not live:
            raise RuntimeError("no replica is running")
        return live[next(self._turn) % len(live)].webhook_url

    def log_tail(self, index: int, chars: int = 3000) -> str:
        path = self.replicas[index].log_path
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every JSON log record of every incarnation, each with ``replica`` (the slot) added; only the records
        whose ``event`` is ``name`` when given."""
        found: list[dict[str, Any]] = []
        for replica in self.replicas:
            if not replica.log_path.exists():
                continue
            for line in replica.log_path.read_text(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by the SIGKILL
                if isinstance(record, dict) and (name is None or record.get("event") == name):
                    record["replica"] = replica.index
                    found.append(record)
        return found


@dataclass(frozen=True)
class Delivery:
    """One report delivery as the operator's endpoint received it."""

    webhook_id: str
    type: str
    call_id: str
    data: dict[str, Any]


class _LoopbackEndpoint:
    """One POST route served on loopback while ``async with`` lasts; ``url`` is where it answers."""

    path = "/"

    def __init__(self) -> None:
        self._server: RunningServer | None = None
        self._stack = contextlib.AsyncExitStack()

    async def _handle(self, request: Request) -> Response:
        raise NotImplementedError

    async def _enter(self) -> None:
        """What else the endpoint needs while it serves (entered into its exit stack)."""

    async def __aenter__(self) -> Self:
        await self._enter()
        app = Starlette(routes=[Route(self.path, self._handle, methods=["POST"])])
        self._server = await self._stack.enter_async_context(serve(app, lifespan="off"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"the {type(self).__name__} is not running")
        return f"{self._server.url}{self.path}"


class ReportSink(_LoopbackEndpoint):
    """The operator's report endpoint on loopback: records every delivery (``down`` answers 503 instead, the sink
    being down). ``url`` for a ``reports.endpoints`` entry once started with ``async with``."""

    path = "/reports"

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: list[Delivery] = []
        self.down = False

    async def _handle(self, request: Request) -> Response:
        if self.down:
            return Response(status_code=503)
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError:
            return Response(status_code=400)
        data = body.get("data") if isinstance(body, dict) else None
        data = data if isinstance(data, dict) else {}
        self.deliveries.append(
            Delivery(
                webhook_id=request.headers.get("webhook-id", ""),
                type=str(body.get("type", "")) if isinstance(body, dict) else "",
                call_id=str(data.get("call_id", "")),
                data=data,
            )
        )
        return Response(status_code=204)

    def of_type(self, type_: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.type == type_]

    def ended_by_call(self) -> dict[str, list[Delivery]]:
        """``call.ended`` deliveries by call id, repeats of one webhook-id (a redelivery) counted once."""
        seen: set[str] = set()
        by_call: dict[str, list[Delivery]] = {}
        for delivery in self.of_type("call.ended"):
            if delivery.webhook_id in seen:
                continue
            seen.add(delivery.webhook_id)
            by_call.setdefault(delivery.call_id, []).append(delivery)
        return by_call


def endpoints_env(urls: Iterable[str]) -> dict[str, str]:
    """The environment setting that sends reports to ``urls`` (unsigned)."""
    return {"SIPCTL_REPORTS__ENDPOINTS": json.dumps([{"url": url} for url in urls])}


#: the webhook request headers the front passes on (the Standard Webhooks signature and the body's type)
FORWARDED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "user-agent")


class WebhookFront(_LoopbackEndpoint):
    """The load balancer in front of the replicas, on loopback: every webhook POSTed to ``url`` goes to the next
    live replica (round-robin); when a replica does not answer (killed, or restarting) the request goes to the
    next live one, as a proxy retries another upstream on a connection failure; while none is up it is held, at
    most ``hold_s`` (OpenAI would redeliver for much longer than the simulator's time-scaled backoff), and
    answered 503 after that. The replica's answer (status and body) is passed back as it is.

    ``owners`` maps each call id to the replica slot that answered its webhook 2xx first; ``failovers`` counts
    the requests that went to another replica after a connection failure, ``held`` those that waited for one.
    """

    path = "/webhooks/openai"

    def __init__(self, cluster: Replicas, *, hold_s: float = 15.0, timeout_s: float = 30.0) -> None:
        super().__init__()
        self.cluster = cluster
        self.hold_s = hold_s
        self.timeout_s = timeout_s
        self.owners: dict[str, int] = {}
        self.failovers = 0
        self.held = 0
        self.refused = 0
        self._client: httpx.AsyncClient | None = None

    async def _handle(self, request: Request) -> Response:
        assert self._client is not None
        body = await request.body()
        headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
        deadline = time.monotonic() + self.hold_s
        waited = False
        while True:
            live = self.cluster.alive()
            if live:
                url = self.cluster.next_webhook_url()
                try:
                    answer = await self._client.post(url, content=body, headers=headers)
                except httpx.TransportError:
                    self.failovers += 1
                else:
                    if 200 <= answer.status_code < 300:
                        self._note_owner(body, url)
                    media = answer.headers.get("content-type")
                    return Response(answer.content, status_code=answer.status_code, media_type=media)
            if time.monotonic() > deadline:
                self.refused += 1
                return Response(status_code=503)
            if not waited:
                waited = True
                self.held += 1
            await asyncio.sleep(0.05)

    def _note_owner(self, body: bytes, url: str) -> None:
        try:
            data = json.loads(body).get("data") or {}
        except (json.JSONDecodeError, AttributeError):
            return
        call_id = data.get("call_id") if isinstance(data, dict) else None
        slot = next((r.index for r in self.cluster.replicas if r.webhook_url == url), None)
        if isinstance(call_id, str) and slot is not None:
            self.owners.setdefault(call_id, slot)

    async def _enter(self) -> None:
        self._client = await self._stack.enter_async_context(httpx.AsyncClient(timeout=self.timeout_s))
