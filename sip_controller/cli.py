"""``sipctl``: serve, demo, check-config, simulate, simulator, bench, soak, migrate, call."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from sip_controller import __version__
from sip_controller.agent import preflight
from sip_controller.config import ENV_PREFIX, ConfigError, Loaded, Secrets, Settings
from sip_controller.service.logging import configure_logging
from sip_controller.simulator.scenario import Scenario, load_scenario

#: garbage-collector thresholds in ``serve`` (Python's default is 700, 10, 10); see ``_tune_gc``
GC_THRESHOLDS = (20_000, 5, 20)
DEMO_SCENARIO = Path(__file__).parent / "simulator" / "scenarios" / "demo.yaml"
#: ``sipctl demo --serve`` keeps the console up at most this long (seconds)
DEMO_SERVE_MAX_S = 3600


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipctl", description="Call controller for OpenAI Realtime SIP calls.")
    parser.add_argument("--version", action="version", version=f"sipctl {__version__}")
    parser.add_argument("--config", type=Path, help="YAML config file (default: $SIPCTL_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (needs OPENAI_API_KEY and OPENAI_WEBHOOK_SECRET)")
    serve.add_argument("--host", help="bind address (default: settings.host)")
    serve.add_argument("--port", type=int, help="port (default: settings.port)")

    check = sub.add_parser("check-config", help="validate the config offline")
    check.add_argument(
        "--print-accept",
        action="store_true",
        help="print a JSON object mapping each profile to its exact accept body (deferred updates on stderr)",
    )
    check.add_argument("--json", action="store_true", help="print the whole result as one JSON document")

    demo = sub.add_parser(
        "demo",
        help="run the whole product on loopback against the simulator, and a call taken over by a second "
        "controller process after its first is killed",
    )
    demo.add_argument(
        "--time-scale", type=float, default=0.5, help="simulated time factor, both sides (default 0.5)"
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="after the calls, keep the demo's controller and its console (with the demo's calls) up until Ctrl-C "
        f"(at most {DEMO_SERVE_MAX_S // 60} minutes)",
    )

    sim = sub.add_parser("simulate", help="run a scenario file against the simulator and check its outcomes")
    sim.add_argument("scenario", type=Path)
    sim.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="compress time on both sides: the simulated caller and the controller's policy timers "
        "(watchdogs, hold, transfer window, goodbye, keypad, filler); e.g. 0.01 runs 20 minutes in 12 s",
    )
    sim.add_argument("--json", action="store_true", help="print the outcomes as JSON")

    bench = sub.add_parser("bench", help="measure ring-to-answer overhead, calls per process, reaction times")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="bench_mode", const="quick", help="about 2 minutes")
    size.add_argument("--smoke", action="store_const", dest="bench_mode", const="smoke", help="seconds: harness check")
    bench.set_defaults(bench_mode="full")
    bench.add_argument("--out", type=Path, help="results directory (default bench/results; quick: …/quick)")
    bench.add_argument(
        "--census",
        type=int,
        nargs="?",
        const=1000,
        metavar="CALLS",
        help="instead: count the objects the controller's collector tracks, by type, with none and CALLS calls live "
        "(default 1000), and its collector passes there (writes census.json)",
    )
    bench.add_argument(
        "--history",
        type=int,
        nargs="?",
        const=100_000,
        metavar="CALLS",
        help="instead: seed CALLS finished calls (default 100000) into SQLite and PostgreSQL and time the call "
        "history's overview, filtered list, search and export (writes history.json)",
    )
    bench.add_argument(
        "--database-url",
        help="PostgreSQL for the per-store scenarios, in a throwaway schema (default: SIPCTL_DATABASE_URL, else "
        "postgresql://postgres@127.0.0.1:5432/test; skipped when none answers)",
    )

    soak = sub.add_parser("soak", help="chaos soak: many calls with injected faults; checks every call ended once")
    soak.add_argument("--calls", type=int, default=1000, help="number of calls (default 1000)")
    soak.add_argument("--fault-rate", type=float, default=0.2, help="share of calls with a fault (default 0.2)")
    soak.add_argument("--seed", type=int, default=1, help="seed of the call and fault mix (default 1)")
    soak.add_argument("--concurrency", type=int, default=25, help="calls in progress at once (default 25)")
    soak.add_argument("--max-wall", type=float, default=600.0, help="give up after this many seconds (default 600)")
    soak.add_argument("--reports", type=Path, help="write every call's report to this JSONL file")
    soak.add_argument(
        "--replicas",
        type=int,
        metavar="N",
        help="run the calls against N real `sipctl serve` processes sharing one store (default: one in-process)",
    )
    soak.add_argument(
        "--kill", action="store_true", help="with --replicas: SIGKILL one replica mid-soak and restart it"
    )
    soak.add_argument(
        "--database-url",
        metavar="URL",
        help="with --replicas: PostgreSQL for the replicas, in a throwaway schema (default: SIPCTL_DATABASE_URL, "
        "else a SQLite file)",
    )

    migrate = sub.add_parser(
        "migrate", help="apply the store's schema migrations (the SQLite file state.path, or SIPCTL_DATABASE_URL)"
    )
    migrate.add_argument(
        "--check", action="store_true", help="apply nothing; exit 1 when migrations are pending or the schema is newer"
    )

    call = sub.add_parser(
        "call",
        help="place an outbound call through the running service's admin API (Twilio; needs SIPCTL_ADMIN_TOKEN)",
    )
    call.add_argument("to", help="the number to call, E.164: +, the country code and the number (+14155550123)")
    call.add_argument("--profile", help="the profile the call runs with (default: the service's default profile)")
    call.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable the profile declares ({{ var:NAME }} in its instructions); repeat for each",
    )
    call.add_argument(
        "--from", dest="from_number", help="caller ID, E.164 (default: the profile's outbound.from_number, else "
        "twilio.from_number)"
    )  # fmt: skip
    call.add_argument(
        "--idempotency-key",
        help="the same key again places nothing more: the call already placed is shown (safe to retry)",
    )
    call.add_argument(
        "--url", help="the service's base URL (default: http://127.0.0.1:<port of the config>)"
    )
    call.add_argument("--json", action="store_true", help="print the service's answer as JSON")

    standalone = sub.add_parser(
        "simulator",
        help="run the simulator on its own (OpenAI's side, signed webhooks to --webhook-url, control API /_sim/calls)",
    )
    standalone.add_argument("--port", type=int, required=True, help="port on --host (0: any free port, printed)")
    standalone.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    standalone.add_argument("--webhook-url", required=True, help="where the realtime.call.incoming webhooks go")
    standalone.add_argument("--secret", help="webhook signing secret, whsec_… (default: a new one, printed)")
    standalone.add_argument("--api-key", default="sk-sim-local", help="the API key clients must send")
    standalone.add_argument(
        "--time-scale", type=float, default=1.0, help="simulated time factor of the scripted callers (default 1)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.config, print_accept=args.print_accept, as_json=args.json)
    if args.command == "serve":
        return _serve(args.config, host=args.host, port=args.port)
    if args.command == "migrate":
        return _migrate(args.config, check=args.check)
    if args.command == "simulate":
        return _simulate(args.config, args.scenario, time_scale=args.time_scale, as_json=args.json)
    if args.command == "simulator":
        return _standalone_simulator(args)
    if args.command == "call":
        return _call(args)
    result = preflight.validate(args.config)
    if _refused(result):
        return 2
    assert result.settings is not None
    if args.command == "demo":
        return _demo(result.settings, time_scale=args.time_scale, serve=args.serve)
    if args.command == "bench":
        from sip_controller import bench

        if args.census is not None:
            from sip_controller.bench import census

            return census.main(args.out or bench.QUICK_OUT, calls=args.census)
        if args.history is not None:
            from sip_controller.bench import history

            return history.main(args.out or bench.DEFAULT_OUT, calls=args.history, database_url=args.database_url)
        return bench.main(mode=args.bench_mode, out_dir=args.out, database_url=args.database_url)
    if args.command == "soak":
        return _soak(result.settings, args)
    return 2  # pragma: no cover - argparse enforces the choices


def _call_variables(pairs: Sequence[str]) -> dict[str, str] | str:
    """``--var NAME=VALUE`` arguments as a mapping, or what is wrong with them."""
    variables: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            return f"--var {pair[:60]!r}: write NAME=VALUE, e.g. --var first_name=Ada"
        if name in variables:
            return f"--var {name}: given twice"
        variables[name] = value
    return variables


def _call(args: argparse.Namespace) -> int:
    """``sipctl call +1…``: ``POST /v1/outbound`` on the running service. Exit 0 placed (or already placed with
    this idempotency key), 1 refused, failed or unreachable, 2 a usage error."""
    import httpx

    variables = _call_variables(args.var)
    if isinstance(variables, str):
        print(f"sipctl: {variables}", file=sys.stderr)
        return 2
    token = os.environ.get("SIPCTL_ADMIN_TOKEN", "").strip()
    if not token:
        print("sipctl: SIPCTL_ADMIN_TOKEN is not set: export the admin token the service runs with", file=sys.stderr)
        return 2
    url = args.url
    if url is None:
        result = preflight.validate(args.config)
        if _refused(result):
            return 2
        assert result.settings is not None
        url = f"http://127.0.0.1:{result.settings.port}"
    body: dict[str, object] = {"to": args.to, "variables": variables}
    if args.profile is not None:
        body["profile"] = args.profile
    if args.from_number is not None:
        body["from"] = args.from_number
    headers = {"authorization": f"Bearer {token}"}
    if args.idempotency_key is not None:
        headers["idempotency-key"] = args.idempotency_key
    endpoint = url.rstrip("/") + "/v1/outbound"
    try:
        with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0)) as client:
            answer = client.post(endpoint, json=body, headers=headers)
    except httpx.HTTPError as exc:
        print(f"sipctl: cannot reach the service at {url} ({type(exc).__name__}): is `sipctl serve` running "
              "there? (--url)", file=sys.stderr)  # fmt: skip
        return 1
    try:
        document = answer.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        print(f"sipctl: {endpoint}: HTTP {answer.status_code}, not a JSON object: {answer.text[:200]!r}",
              file=sys.stderr)  # fmt: skip
        return 1
    if args.json:
        print(json.dumps({"http_status": answer.status_code, **document}, indent=2))
    ok = answer.status_code in (200, 201) and isinstance(document.get("id"), str)
    if ok and not args.json:
        replayed = " (already placed with this idempotency key)" if document.get("replayed") else ""
        print(f"placed {document['id']}{replayed}: CallSid {document.get('call_sid') or '-'}, "
              f"status {document.get('status') or '-'}")  # fmt: skip
    elif not ok:
        print(f"sipctl: {_call_refusal(answer.status_code, document, url)}", file=sys.stderr)
    return 0 if ok else 1


def _call_refusal(status: int, document: dict[str, object], url: str) -> str:
    """One line saying why the service did not place the call, and what to do."""
    error = str(document.get("error") or f"HTTP {status}")
    outbound_id = document.get("id")
    if status == 401:
        return "the service refused the admin token: SIPCTL_ADMIN_TOKEN must be the token it runs with"
    if status == 429:
        return f"{error} (the service throttles wrong admin tokens)"
    if status == 404 and "Twilio" not in error:
        return f"{url} has no admin API: is SIPCTL_ADMIN_TOKEN set where the service runs? Is --url right?"
    if status == 422:
        code = document.get("twilio_code")
        notes = ([f"Twilio code {code}"] if code is not None else []) + (
            [f"outbound id {outbound_id}"] if outbound_id else []
        )
        return f"refused: {error}" + (f" ({', '.join(notes)})" if notes else "")
    if status == 502:
        line = f"Twilio failed: {error} (outbound id {outbound_id})"
        if document.get("ambiguous"):
            line += (f"; the call may have been placed all the same: check GET /v1/outbound/{outbound_id} "
                     "before placing it again")  # fmt: skip
        return line
    if status == 503:
        return f"{error} (HTTP 503)"
    return f"HTTP {status}: {error}"


def _standalone_simulator(args: argparse.Namespace) -> int:
    """``sipctl simulator``: serve OpenAI's side and the control API until SIGINT or SIGTERM (exit 0)."""
    import signal

    from sip_controller.simulator.standalone import secret_problem, serve_until

    problem = None if args.secret is None else secret_problem(args.secret)
    if problem is not None:
        print(f"sipctl: --secret: not a webhook secret: {problem}", file=sys.stderr)
        return 2
    if args.time_scale <= 0:
        print("sipctl: --time-scale must be positive", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serve_until(
                stop,
                out=sys.stdout,
                webhook_url=args.webhook_url,
                secret=args.secret,
                host=args.host,
                port=args.port,
                api_key=args.api_key,
                time_scale=args.time_scale,
            )
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"sipctl: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _refused(result: preflight.Validation) -> bool:
    """Print the warnings, and the errors if any (one line for one, a list for several): True when refused."""
    for warning in result.warnings:
        print(f"sipctl: warning: {warning}", file=sys.stderr)
    if result.errors:
        print(f"sipctl: {ConfigError(result.errors)}", file=sys.stderr)
        return True
    return False


def _check_config(config: Path | None, *, print_accept: bool, as_json: bool) -> int:
    """The start-up check of ``sipctl serve``, offline: every problem is printed, and any error makes the exit
    status 2."""
    from sip_controller.agent import session

    result = preflight.validate(config, serve=True)
    warnings = [str(w) for w in result.warnings]
    if result.errors or result.settings is None:
        if as_json:
            print(json.dumps({"ok": False, "errors": result.errors, "warnings": warnings, "notes": []}, indent=2))
        else:
            _refused(result)
        return 2
    settings = result.settings
    twilio_configured = result.secrets is not None and result.secrets.twilio is not None
    notes = preflight.notes(settings, twilio_configured=twilio_configured)
    bodies = {name: session.accept_body(profile) for name, profile in settings.profiles.items()}
    deferred = {}
    for name, profile in settings.profiles.items():
        patch = session.deferred_vad_patch(profile)
        if patch is not None:
            deferred[name] = session.session_update(profile, patch, event_id="ctl_session_1")
    if as_json:
        profiles = {name: {"accept": bodies[name], "deferred_session_update": deferred.get(name)} for name in bodies}
        report = {"ok": True, "errors": [], "warnings": warnings, "notes": notes}
        print(json.dumps({**report, "profiles": profiles}, indent=2))
        return 0
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if print_accept:
        print(json.dumps(bodies, indent=2))
        for name, event in deferred.items():
            header = f"profile {name}: session.update sent right after the sideband attaches:"
            print(f"{header}\n{json.dumps(event, indent=2)}", file=sys.stderr)
        return 0
    print(f"config ok: {len(settings.profiles)} profile(s): {', '.join(sorted(settings.profiles))}")
    for note in notes:
        print(f"  note: {note}")
    return 0


def _serve(config: Path | None, *, host: str | None, port: int | None) -> int:
    from sip_controller.service import serving
    from sip_controller.service.app import create_app

    result = preflight.validate(config, serve=True)
    if _refused(result):
        return 2
    settings, secrets = result.settings, result.secrets
    assert settings is not None
    assert secrets is not None
    bind_host = host or settings.host
    bind_port = port if port is not None else settings.port
    try:
        sockets = serving.listen(bind_host, bind_port)
    except OSError as exc:  # before anything starts or logs
        problem = _listen_problem(exc, bind_host, bind_port, result.loaded, host_given=bool(host), port_given=port)
        print(f"sipctl: {problem}", file=sys.stderr)
        return 2
    unusable = _store_problem(settings, secrets)  # opened (and migrated) once here: a bad path is one line, exit 2
    if unusable is not None:
        for sock in sockets:
            sock.close()
        print(f"sipctl: {unusable}", file=sys.stderr)
        return 2
    # before anything can log: with caching on, a logger used earlier would keep the default configuration
    configure_logging(settings.log_level, settings.log_format, cache=True)
    from sip_controller.state.factory import open_store

    try:
        app = create_app(settings, secrets, store=lambda: open_store(settings, secrets), freeze_heap=True)
    except ConfigError as exc:
        for sock in sockets:
            sock.close()
        print(f"sipctl: {exc}", file=sys.stderr)
        return 2
    _tune_gc()
    serving.serve(app, settings, host=bind_host, port=bind_port, sockets=sockets)
    return 0


def _store_problem(settings: Settings, secrets: Secrets) -> str | None:
    """Open the store the settings name, apply pending migrations and close it: why it cannot be used, in one
    line naming it (never the database URL's secrets), or None. The app's lifespan opens it again on its own
    event loop."""
    import sqlite3

    import asyncpg

    from sip_controller.state.factory import describe, open_store
    from sip_controller.state.records import StoreError

    async def run() -> None:
        store = await open_store(settings, secrets)
        await store.aclose()

    try:
        asyncio.run(run())
    except (StoreError, asyncpg.PostgresError, sqlite3.Error, OSError) as exc:
        return f"{describe(settings, secrets)}: {exc}"
    return None


def _migrate(config: Path | None, *, check: bool) -> int:
    """``sipctl migrate``: bring the store's schema to this version (``--check``: only say whether it is). The
    database URL is a secret: the store is named by :func:`~sip_controller.state.factory.describe` only."""
    import sqlite3

    import asyncpg

    from sip_controller.state.factory import describe, open_store
    from sip_controller.state.records import StoreError

    result = preflight.validate(config)
    if _refused(result):
        return 2
    assert result.settings is not None
    settings = result.settings
    try:
        secrets = Secrets.from_env()
    except ConfigError as exc:
        print(f"sipctl: {exc}", file=sys.stderr)
        return 2
    where = describe(settings, secrets)

    async def run() -> tuple[list[int], int]:
        async with await open_store(settings, secrets, migrate=None) as store:
            if check:
                await store.check_schema()
                return [], await store.schema_version()
            return await store.migrate(), await store.schema_version()

    try:
        applied, version = asyncio.run(run())
    except (StoreError, asyncpg.PostgresError, sqlite3.Error) as exc:
        print(f"sipctl: {where}: {exc}", file=sys.stderr)
        return 1
    if check:
        print(f"{where}: schema version {version}, up to date")
    elif applied:
        print(f"{where}: applied {', '.join(f'{v:04d}' for v in applied)}; schema version {version}")
    else:
        print(f"{where}: schema version {version}, nothing to apply")
    return 0


def _source(flag: str, name: str, value: object, explicit: bool, loaded: Loaded) -> str:
    """How the operator set ``name``: ``--port 8000``, ``SIPCTL_PORT=8000``, ``port 8000 in <file>``, or the
    default."""
    if explicit:
        return f"{flag} {value}"
    source = loaded.source_of(name)
    if source is None:
        return f"{name} {value} (the default)"
    if source.startswith(ENV_PREFIX):
        return f"{source}={value}"
    return f"{name} {value} ({source.removeprefix(name + ' ')})"


def _listen_problem(
    exc: OSError, host: str, port: int, loaded: Loaded, *, host_given: bool, port_given: int | None
) -> str:
    """One line naming the setting to change (as the operator set it) and how."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    port_set = _source("--port", "port", port, port_given is not None, loaded)
    host_set = _source("--host", "host", host, host_given, loaded)
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{port_set}: {address} is already in use by another process; stop it, or choose a free port with "
            "--port or SIPCTL_PORT"
        )
    if exc.errno == errno.EACCES:
        return (
            f"{port_set}: no permission to listen on {address} (ports below 1024 need privileges); use a port of "
            "1024 or above (--port or SIPCTL_PORT) behind your proxy"
        )
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{host_set}: cannot listen on {host!r} ({reason}); use an address of this machine, 127.0.0.1, or "
            "0.0.0.0 for every interface (--host or SIPCTL_HOST)"
        )
    return f"{host_set}, {port_set}: cannot listen on {address} ({reason}); check --host and --port"


def _tune_gc() -> None:
    """Keep garbage-collector pauses off the call path. Everything loaded so far (modules, pydantic models,
    settings) lives as long as the process: freeze it, so collections never walk it; from then on the app's heap
    freezer (``service/heap.py``) freezes what survives every second, so they never walk live calls either (calls
    free their objects by reference counting). Young objects are collected every 20,000 net allocations instead
    of Python's 700. The measurements behind these numbers are in the README's Performance section."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _simulate(config: Path | None, scenario_path: Path, *, time_scale: float, as_json: bool) -> int:
    """``sipctl simulate``: the config the scenario names unless ``--config`` is given, checked like every
    start-up and against the scenario's expectations before any call is placed."""
    from sip_controller.simulator import ScenarioError, harness

    try:
        prepared = harness.prepare(scenario_path, config)
    except (ConfigError, ScenarioError) as exc:
        print(f"sipctl: {exc}", file=sys.stderr)
        return 2
    for warning in prepared.warnings:
        print(f"sipctl: warning: {warning}", file=sys.stderr)
    used = f"config: {prepared.describe_config()}"
    if as_json:
        print(used, file=sys.stderr)
    return _run_scenario(
        prepared.settings, prepared.scenario, time_scale=time_scale, as_json=as_json, config_line=used
    )


def _run_scenario(
    settings: Settings, scenario: Scenario, *, time_scale: float, as_json: bool, config_line: str | None = None
) -> int:
    from sip_controller.calls.report import report_document
    from sip_controller.simulator import harness

    if not time_scale > 0:
        print("sipctl: --time-scale must be positive", file=sys.stderr)
        return 2
    configure_logging("error", settings.log_format)
    run = asyncio.run(harness.run_scenario(scenario, settings, time_scale=time_scale))
    if as_json:
        payload = [
            {
                "call": o.spec.name,
                "ok": o.ok,
                "problems": o.problems,
                "simulator": o.sim.summary(),
                "controller": o.record.to_dict() if o.record else None,
            }
            for o in run.calls
        ] + [
            {
                "call": o.name,
                "direction": o.direction,
                "ok": o.ok,
                "problems": o.problems,
                "twilio": o.twilio.summary() if o.twilio else None,
                "simulator": [leg.summary() for leg in o.legs],
                # the call.ended report as the operator gets it (its twilio and outbound parts included)
                "controller": report_document(o.record, mask_caller=settings.reports.mask_caller) if o.record else None,
            }
            for o in run.twilio
        ]
        if run.batch is not None:  # the scenario's outbound batch (#16)
            b = run.batch
            payload.append({
                "batch": b.name, "ok": b.ok, "problems": b.problems, "created": b.created,
                "status": b.record.status if b.record else None, "outcomes": b.record.outcomes if b.record else None,
                "calls": [{"to": c.to, "sid": c.sid, "status": c.status, "placed_at": b.placed_at.get(c.sid)}
                          for c in b.calls],
            })  # fmt: skip
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(f"scenario {scenario.name}: {scenario.description}".rstrip(": "))
        if config_line is not None:
            print(config_line)
        harness.print_run(run, sys.stdout)
    return 0 if run.ok else 1


def _demo(settings: Settings, *, time_scale: float, serve: bool = False) -> int:
    """``sipctl demo``: the demo scenario's calls and a call an operator steers through the admin API
    (``steered_demo``) in this process and, at the same time, a call whose controller (a ``sipctl serve`` child) is
    SIGKILLed mid-call and taken over by a second one (``takeover_demo``), printed after the scenario's; then a
    short analysis per call and the console's address with the demo's admin token (``--serve``: kept up until
    Ctrl-C). Exit 1 if any of them fails."""
    import secrets

    from sip_controller.simulator import harness, steered_demo, takeover_demo

    if not time_scale > 0:
        print("sipctl: --time-scale must be positive", file=sys.stderr)
        return 2
    configure_logging("error", settings.log_format)
    scenario = load_scenario(DEMO_SCENARIO)

    # the Twilio calls (an outbound call a person answers, a call to a Twilio number) need a profile that places
    # calls: the demo's own (#16)
    settings = harness.with_demo_outbound(settings)
    settings = harness.with_demo_analysis(settings)  # a short analysis of each call (#17), by the simulator
    token = secrets.token_urlsafe(18)  # the demo's admin token: its console and the steered call's requests

    async def run() -> bool:
        replicas_up = asyncio.Event()
        takeover_task = asyncio.create_task(takeover_demo.run_takeover(time_scale=time_scale, started=replicas_up))
        await replicas_up.wait()  # the scenario's calls then, beside the takeover call, not beside two start-ups
        async with harness.scenario_stack(scenario, settings, time_scale=time_scale, admin_token=token) as stack:
            try:
                run, steered = await asyncio.gather(
                    harness.run_calls(stack, scenario), steered_demo.run_steered(stack, timeout=60.0)
                )
            except BaseException:
                takeover_task.cancel()
                raise
            twilio = [(o.name, await harness.analysis_of(stack, o.record, timeout=20.0)) for o in run.twilio]
            takeover = await takeover_task
            print(f"scenario {scenario.name}: {scenario.description}".rstrip(": "))
            harness.print_run(run, sys.stdout)
            steered_demo.print_steered(steered, sys.stdout)
            takeover_demo.print_takeover(takeover, sys.stdout)
            ok = run.ok and steered.ok and takeover.ok
            calls = len(run) + 2
            print(f"\ndemo: {'all ' + str(calls) + ' calls passed' if ok else 'FAILED'}")
            none = "no analysis (nothing was said)"
            harness.print_closing(
                [(o.spec.name, o.analysis, none) for o in run.calls]
                + [(name, analysis, none) for name, analysis in twilio]
                + [(steered_demo.NAME, steered.analysis, none),
                   ("takeover", takeover.analysis, "no call.analyzed from replica B")],
                stack.server.url,
                token,
                sys.stdout,
            )  # fmt: skip
            if serve:
                print(f"  serving until Ctrl-C (at most {DEMO_SERVE_MAX_S // 60} minutes)", flush=True)
                await _until_interrupted(DEMO_SERVE_MAX_S)
            else:
                print("  it stops with the demo: `sipctl demo --serve` keeps it up, with these calls, until Ctrl-C")
            return ok

    return 0 if asyncio.run(run()) else 1


async def _until_interrupted(max_s: float) -> None:
    """Until SIGINT or SIGTERM, at most ``max_s`` seconds."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), max_s)
    except TimeoutError:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _soak(settings: Settings, args: argparse.Namespace) -> int:
    from sip_controller.simulator import soak

    if args.replicas is None and (args.kill or args.database_url):
        print("sipctl: --kill and --database-url need --replicas N", file=sys.stderr)
        return 2
    if args.replicas is not None and args.replicas < 1:
        print("sipctl: --replicas must be at least 1 (1: the one process, killed and restarted)", file=sys.stderr)
        return 2
    configure_logging("error", settings.log_format)
    soak.quiet_uvicorn_denials()
    if args.replicas is not None:
        return _soak_replicas(args)
    try:
        result = asyncio.run(
            soak.run_soak(
                calls=args.calls,
                fault_rate=args.fault_rate,
                seed=args.seed,
                concurrency=args.concurrency,
                max_wall_s=args.max_wall,
                settings=settings,
                reports=args.reports,
                out=sys.stdout,
            )
        )
    except ValueError as exc:
        print(f"sipctl: {exc}", file=sys.stderr)
        return 2
    return 0 if result.ok else 1


def _soak_replicas(args: argparse.Namespace) -> int:
    """``sipctl soak --replicas N [--kill]``: the soak against ``sipctl serve`` child processes."""
    from sip_controller.simulator import soak_replicas

    database_url = soak_replicas.database_url_from(args.database_url)
    if database_url is not None and not database_url.startswith(("postgresql://", "postgres://")):
        print("sipctl: --database-url: not a PostgreSQL URL (postgresql://…)", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(
            soak_replicas.run_soak_replicas(
                replicas=args.replicas,
                kill=args.kill,
                calls=args.calls,
                fault_rate=args.fault_rate,
                seed=args.seed,
                concurrency=args.concurrency,
                max_wall_s=args.max_wall,
                database_url=database_url,
                config=args.config,
                reports=args.reports,
                out=sys.stdout,
            )
        )
    except ValueError as exc:
        print(f"sipctl: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, RuntimeError) as exc:  # no PostgreSQL; a replica that would not start
        print(f"sipctl: soak: {exc}", file=sys.stderr)
        return 1
    return 0 if result.ok else 1
