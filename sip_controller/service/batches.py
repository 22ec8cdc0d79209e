"""Outbound call batches (#16): reading a batch request (JSON or CSV), checking each row, calling-hours maths.

A request names a profile, its rows (a number, the profile's variables, optionally the callee's time zone) and its
settings: pacing (``calls_per_second``, ``max_in_flight``), calling hours (``start``/``end`` local times in the
callee's time zone) and retries (``no_answer``/``busy``: how many, ``delay_s`` apart). Every row is checked the way
``POST /v1/outbound`` checks one call (E.164, the do-not-call list, the profile's declared variables; the same
messages), plus its time zone and numbers repeated within the batch; the bad rows are reported by number (1-based,
in the order given; in a CSV upload the first line after the header is row 1) and the good ones queued.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from fnmatch import fnmatchcase
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sip_controller.config import Settings
from sip_controller.service.twilio_routes import OutboundRefused, outbound_request

MAX_ROWS = 10_000
MAX_CALLS_PER_SECOND = 50.0
MAX_IN_FLIGHT = 1_000
MAX_RETRIES = 10
MAX_RETRY_DELAY_S = 7 * 86_400.0
DEFAULT_RETRY_DELAY_S = 600.0
#: the CSV columns that are not variables
CSV_FIELDS = ("to", "timezone")


class BatchRefused(ValueError):
    """A batch request whose settings (not one of its rows) cannot be used; the message says what to fix."""


class Malformed(str):
    """A row that could not even be read (a CSV line with the wrong number of cells): the text says why."""

    __slots__ = ()


@dataclass(frozen=True)
class CallingHours:
    """Calls start only between ``start`` and ``end`` (local times, ``start`` < ``end``) in the callee's zone."""

    start: time
    end: time
    #: the zone of rows that name none
    timezone: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"start": self.start.strftime("%H:%M"), "end": self.end.strftime("%H:%M"), "timezone": self.timezone}


@dataclass(frozen=True)
class Retries:
    no_answer: int = 0
    busy: int = 0
    delay_s: float = DEFAULT_RETRY_DELAY_S

    def allowed(self, outcome: str, retries_so_far: int) -> bool:
        """Whether a row whose latest attempt ended with ``outcome`` is called again: while its retries so far are
        fewer than the setting for that outcome."""
        limit = {"no_answer": self.no_answer, "busy": self.busy}.get(outcome, 0)
        return retries_so_far < limit

    def as_json(self) -> dict[str, Any]:
        return {"no_answer": self.no_answer, "busy": self.busy, "delay_s": self.delay_s}


@dataclass(frozen=True)
class BatchOptions:
    profile: str
    calls_per_second: float = 1.0
    max_in_flight: int = 10
    calling_hours: CallingHours | None = None
    retries: Retries = field(default_factory=Retries)
    #: the caller ID for every row (None: the profile's or the configured one)
    from_number: str | None = None

    def as_json(self) -> dict[str, Any]:
        """What the store keeps beside pacing (``NewBatch.options``), read back by :func:`options_from`."""
        return {
            "calling_hours": None if self.calling_hours is None else self.calling_hours.as_json(),
            "retries": self.retries.as_json(),
            "from": self.from_number,
        }


@dataclass(frozen=True)
class GoodRow:
    row: int
    to: str
    variables: dict[str, str]
    timezone: str | None


@dataclass(frozen=True)
class CheckedBatch:
    options: BatchOptions
    good: list[GoodRow]
    #: ``{"row": n, "error": "..."}`` per refused row
    rejected: list[dict[str, Any]]
    request_hash: str


# ---- calling hours ---------------------------------------------------------------------------------------------


def zone(name: object) -> ZoneInfo:
    """The IANA time zone ``name``, or :class:`ValueError` saying so."""
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ValueError(f"{str(name)[:64]!r} is not an IANA time zone (e.g. America/New_York)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name[:64]!r} is not an IANA time zone (e.g. America/New_York)") from None


def window_opens_at(now: float, hours: CallingHours, tz: ZoneInfo) -> float:
    """``now`` when the calling window is open at ``now`` (epoch seconds) in ``tz``, else when it next opens. Each
    local day's window is computed on that day's own UTC offset, so it opens at ``start`` local time on both sides
    of a daylight-saving change (a ``start`` that does not exist that day, in the skipped hour, opens at the same
    wall-clock time on the offset before the change, i.e. an hour later)."""
    local = datetime.fromtimestamp(now, tz)
    for days in range(3):
        day = local.date() + timedelta(days=days)
        opens = datetime.combine(day, hours.start, tzinfo=tz).timestamp()
        closes = datetime.combine(day, hours.end, tzinfo=tz).timestamp()
        if opens <= now < closes:
            return now
        if now < opens:
            return opens
    raise AssertionError("a daily window opens within three days")  # pragma: no cover


def row_zone(hours: CallingHours | None, row_timezone: str | None) -> ZoneInfo | None:
    name = row_timezone or (hours.timezone if hours else None)
    return None if name is None else zone(name)


# ---- settings ----------------------------------------------------------------------------------------------------


def _number(value: object, name: str, low: float, high: float, *, integer: bool = False) -> float:
    if isinstance(value, str):
        text = value
        try:
            value = float(text) if not integer else int(text)
        except ValueError:
            raise BatchRefused(f"{name}: {text[:20]!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BatchRefused(f"{name}: a number from {low:g} to {high:g}")
    if integer and value != int(value):
        raise BatchRefused(f"{name}: a whole number from {low:g} to {high:g}")
    if not low <= value <= high:
        raise BatchRefused(f"{name}: {value:g} is out of range; use {low:g} to {high:g}")
    return float(value)


def _clock_time(value: object, name: str) -> time:
    try:
        if not isinstance(value, str):
            raise ValueError
        return time.fromisoformat(value)
    except ValueError:
        raise BatchRefused(f"{name}: {str(value)[:20]!r} is not a local time; write HH:MM, e.g. 09:00") from None


def _object(value: object, name: str, keys: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BatchRefused(f"{name}: a JSON object with {', '.join(sorted(keys))}")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise BatchRefused(f"{name}: unknown field(s) {', '.join(unknown)}; use {', '.join(sorted(keys))}")
    return value


def options_from(settings: Settings, spec: Mapping[str, Any]) -> BatchOptions:
    """The batch's settings from the JSON shape (``profile``, ``pacing``, ``calling_hours``, ``retries``,
    ``from``), or :class:`BatchRefused`."""
    profile = spec.get("profile", settings.default_profile)
    if not isinstance(profile, str) or profile not in settings.profiles:
        raise BatchRefused(f"profile: {str(profile)[:60]!r} is not a profile; use one of "
                           f"{', '.join(sorted(settings.profiles))}")  # fmt: skip
    pacing = _object(spec.get("pacing"), "pacing", {"calls_per_second", "max_in_flight"})
    cps = _number(pacing.get("calls_per_second", 1.0), "pacing.calls_per_second", 0.01, MAX_CALLS_PER_SECOND)
    in_flight = _number(pacing.get("max_in_flight", 10), "pacing.max_in_flight", 1, MAX_IN_FLIGHT, integer=True)
    hours = None
    if spec.get("calling_hours") is not None:
        raw = _object(spec["calling_hours"], "calling_hours", {"start", "end", "timezone"})
        start = _clock_time(raw.get("start"), "calling_hours.start")
        end = _clock_time(raw.get("end"), "calling_hours.end")
        if start >= end:
            raise BatchRefused("calling_hours: start must be before end (a window within one local day)")
        default_zone = raw.get("timezone")
        if default_zone is not None:
            try:
                zone(default_zone)
            except ValueError as exc:
                raise BatchRefused(f"calling_hours.timezone: {exc}") from None
        hours = CallingHours(start, end, default_zone)
    retries_spec = _object(spec.get("retries"), "retries", {"no_answer", "busy", "delay_s"})
    retries = Retries(
        no_answer=int(_number(retries_spec.get("no_answer", 0), "retries.no_answer", 0, MAX_RETRIES, integer=True)),
        busy=int(_number(retries_spec.get("busy", 0), "retries.busy", 0, MAX_RETRIES, integer=True)),
        delay_s=_number(retries_spec.get("delay_s", DEFAULT_RETRY_DELAY_S), "retries.delay_s", 0, MAX_RETRY_DELAY_S),
    )
    from_number = spec.get("from")
    if from_number is not None and not isinstance(from_number, str):
        raise BatchRefused("from: an E.164 number, or leave it out to use the configured caller ID")
    return BatchOptions(profile, cps, int(in_flight), hours, retries, from_number)


def stored_options(profile: str, stored: Mapping[str, Any]) -> BatchOptions:
    """The settings a batch was created with, from the store's ``options`` (pacing is the store's own)."""
    raw_hours = stored.get("calling_hours")
    hours = None
    if isinstance(raw_hours, dict):
        hours = CallingHours(time.fromisoformat(raw_hours["start"]), time.fromisoformat(raw_hours["end"]),
                             raw_hours.get("timezone"))  # fmt: skip
    raw_retries = stored.get("retries") or {}
    retries = Retries(int(raw_retries.get("no_answer", 0)), int(raw_retries.get("busy", 0)),
                      float(raw_retries.get("delay_s", DEFAULT_RETRY_DELAY_S)))  # fmt: skip
    return BatchOptions(profile, calling_hours=hours, retries=retries, from_number=stored.get("from"))


# ---- rows --------------------------------------------------------------------------------------------------------


def on_do_not_call(settings: Settings, number: str) -> bool:
    return any(fnmatchcase(number, pattern) for pattern in settings.twilio.do_not_call)


def check_row(settings: Settings, options: BatchOptions, raw: object) -> GoodRow | str:
    """One row checked as ``POST /v1/outbound`` checks a call (its messages), plus its time zone: the row (numbered
    later), or what is wrong with it."""
    if isinstance(raw, Malformed):
        return str(raw)
    if not isinstance(raw, dict):
        return 'a row is a JSON object: {"to": "+14155550123", "variables": {...}, "timezone": "..."}'
    unknown = sorted(set(raw) - {"to", "variables", "timezone"})
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; use to, variables, timezone"
    body: dict[str, Any] = {"to": raw.get("to"), "profile": options.profile, "variables": raw.get("variables", {})}
    if options.from_number is not None:
        body["from"] = options.from_number
    try:
        to, _caller, _profile, variables = outbound_request(settings, body)
    except OutboundRefused as exc:
        return str(exc)
    timezone = raw.get("timezone")
    if timezone is not None:
        try:
            zone(timezone)
        except ValueError as exc:
            return f"timezone: {exc}"
    if options.calling_hours is not None and timezone is None and options.calling_hours.timezone is None:
        return "timezone: calling hours need the callee's time zone; give the row one or set calling_hours.timezone"
    return GoodRow(0, to, variables, timezone)


def check_rows(settings: Settings, options: BatchOptions, rows: Sequence[object]) -> CheckedBatch:
    if not rows:
        raise BatchRefused("rows: no rows; give at least one")
    if len(rows) > MAX_ROWS:
        raise BatchRefused(f"rows: {len(rows)} rows; a batch takes at most {MAX_ROWS}")
    good: list[GoodRow] = []
    rejected: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(rows, start=1):
        checked = check_row(settings, options, raw)
        if isinstance(checked, GoodRow) and checked.to in first_seen:
            checked = f"to: the number is already in row {first_seen[checked.to]}; a batch calls each number once"
        if isinstance(checked, str):
            rejected.append({"row": number, "error": checked})
            continue
        first_seen[checked.to] = number
        good.append(GoodRow(number, checked.to, checked.variables, checked.timezone))
    canonical = json.dumps(
        [options.as_json(), options.profile, options.calls_per_second, options.max_in_flight, rows],
        sort_keys=True, default=str,
    )  # fmt: skip
    return CheckedBatch(options, good, rejected, hashlib.sha256(canonical.encode()).hexdigest())


def from_json(settings: Settings, body: object) -> CheckedBatch:
    if not isinstance(body, dict):
        raise BatchRefused('the body must be JSON: {"profile": "...", "rows": [{"to": "+1...", "variables": {...}}]}')
    unknown = sorted(set(body) - {"profile", "rows", "pacing", "calling_hours", "retries", "from"})
    if unknown:
        raise BatchRefused(f"unknown field(s) {', '.join(unknown)}; use profile, rows, pacing, calling_hours, "
                           "retries, from")  # fmt: skip
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise BatchRefused('rows: a JSON array of {"to": "+1...", "variables": {...}}')
    return check_rows(settings, options_from(settings, body), rows)


#: the query parameters of a CSV upload and where each goes in the JSON shape
CSV_PARAMETERS = {
    "profile": ("profile",),
    "from": ("from",),
    "calls_per_second": ("pacing", "calls_per_second"),
    "max_in_flight": ("pacing", "max_in_flight"),
    "hours_start": ("calling_hours", "start"),
    "hours_end": ("calling_hours", "end"),
    "timezone": ("calling_hours", "timezone"),
    "retries_no_answer": ("retries", "no_answer"),
    "retries_busy": ("retries", "busy"),
    "retry_delay_s": ("retries", "delay_s"),
}


def from_csv(settings: Settings, text: str, query: Mapping[str, str]) -> CheckedBatch:
    """A CSV upload: a header row naming ``to``, optionally ``timezone``, and the profile's variables; the
    settings as query parameters (:data:`CSV_PARAMETERS`). An empty cell is a variable not given."""
    unknown = sorted(set(query) - set(CSV_PARAMETERS))
    if unknown:
        raise BatchRefused(f"unknown query parameter(s) {', '.join(unknown)}; use {', '.join(CSV_PARAMETERS)}")
    spec: dict[str, Any] = {}
    for name, value in query.items():
        path = CSV_PARAMETERS[name]
        if len(path) == 1:
            spec[path[0]] = value
        else:
            spec.setdefault(path[0], {})[path[1]] = value
    if "calling_hours" in spec and not {"start", "end"} <= set(spec["calling_hours"]):
        raise BatchRefused("hours_start and hours_end: give both for calling hours (and timezone, or a timezone "
                           "column)")  # fmt: skip
    options = options_from(settings, spec)
    reader = csv.reader(io.StringIO(text))
    try:
        header = [name.strip() for name in next(reader)]
        lines = list(reader)
    except StopIteration:
        raise BatchRefused("the CSV is empty; its first line names the columns: to,first_name,...") from None
    except csv.Error as exc:
        raise BatchRefused(f"the CSV cannot be read: {exc}") from None
    if "to" not in header:
        raise BatchRefused("the CSV's header has no to column; its first line names the columns: to,first_name,...")
    if len(set(header)) != len(header) or "" in header:
        raise BatchRefused("the CSV's header names a column twice or leaves one unnamed")
    rows: list[object] = []
    for line in lines:
        if not any(cell.strip() for cell in line):
            continue
        if len(line) != len(header):
            rows.append(Malformed(f"{len(line)} cells where the header has {len(header)}"))
            continue
        cells = dict(zip(header, (cell.strip() for cell in line), strict=True))
        row: dict[str, Any] = {"to": cells["to"]}
        if cells.get("timezone"):
            row["timezone"] = cells["timezone"]
        row["variables"] = {k: v for k, v in cells.items() if k not in CSV_FIELDS and v}
        rows.append(row)
    return check_rows(settings, options, rows)
