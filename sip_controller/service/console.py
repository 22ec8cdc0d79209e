"""The live-calls page: a small server-rendered console for operators, no front-end build step.

``GET /`` shows a login form until the browser holds a session cookie (``POST /login`` with the token, or
``GET /?token=…`` once, which redirects to ``/`` so the token does not stay in the address bar or history). The
cookie holds an opaque session id, never the token; ``POST /logout`` revokes the session on the server. Wrong
tokens are throttled per client (429 with ``Retry-After``); sign-in and sign-out accept only requests from our own
origin, and sign-out and the page's buttons also need the session's CSRF token (see
:mod:`sip_controller.service.sessions`).
The page lists live and recently ended calls and, with ``?call=<call_id>``, one call's transcript and the
operator's buttons (hang up, transfer to an allow-listed target). ``/console.js`` keeps it current from
``GET /v1/events`` (server-sent events): a snapshot of the calls every second and, with ``?call_id=…``, that
call's transcript lines as they appear. The header links the live view to the call history (#17: the Calls
view, a call's page, the Overview), drawn in the same page by the script of :mod:`.console_history`, which
``/console.js`` carries after the live view's, and to the outbound batches (#16: :mod:`.console_batches`, its
script last).

Everything from the caller's side (transcripts, numbers) is escaped on the server and set with ``textContent``
in the browser; a Content-Security-Policy allows only this origin's script. Streams are bounded: at most
``max_streams`` at once (then 503), each ends when the client disconnects, when the service is draining with no
live call left, or after ``max_stream_s`` (the browser reconnects on its own).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from sip_controller.calls.features.control import MAX_CONTEXT_CHARS
from sip_controller.calls.report import CallRecord
from sip_controller.service import console_batches, console_history, history
from sip_controller.service.admin import CSRF_HEADER, AdminAuth, call_summary
from sip_controller.service.sessions import Session, retry_after_header, same_origin
from sip_controller.state.records import StoreError

log = structlog.get_logger("sip_controller.service.console")

#: recently ended calls shown under the live ones
RECENT_SHOWN = 20
LOGIN_MAX_BODY = 4096

_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}
header{display:flex;gap:1rem;align-items:center;padding:.6rem 1.2rem;background:#1d2430;color:#fff}
header h1{font-size:1.1rem;margin:0;flex:1}
header form{margin:0}
main{padding:1rem 1.2rem;display:grid;gap:1rem;grid-template-columns:minmax(0,3fr) minmax(0,2fr)}
main.narrow{grid-template-columns:minmax(0,1fr)}
section{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:.8rem 1rem}
h2{font-size:1rem;margin:.2rem 0 .6rem}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eceef2;white-space:nowrap}
td.num,th.num{text-align:right}
td:first-child{white-space:normal;word-break:break-all;min-width:10rem}
main>div{display:grid;gap:1rem;align-content:start}
.scroll{overflow-x:auto}
tr.selected{background:#eef4ff}
a{color:#1a56c4}
.muted{color:#6b7383}
#status{font-size:.85rem}
#status.ok{color:#7ee08a}
#status.bad{color:#ffb4a8}
ol#transcript{list-style:none;padding:0;margin:0;max-height:50vh;overflow-y:auto}
ol#transcript li{padding:.25rem 0;border-bottom:1px solid #f0f1f4}
.role{font-weight:600;margin-right:.4rem}
.role-caller{color:#9a3b00}
.role-assistant{color:#1a56c4}
.at{color:#6b7383;font-size:.8rem;margin-right:.4rem}
.actions{display:flex;gap:.5rem;flex-wrap:wrap;align-items:center;margin:.6rem 0}
select{font:inherit;padding:.2rem}
button{font:inherit;padding:.3rem .8rem;border-radius:4px;border:1px solid #9aa3b2;background:#fff;cursor:pointer}
button.danger{border-color:#b3261e;color:#b3261e}
button:disabled{opacity:.45;cursor:default}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem;margin:0}
dt{color:#6b7383}
dd{margin:0;overflow-wrap:anywhere}
.login{max-width:24rem;margin:12vh auto}
.login input{font:inherit;width:100%;box-sizing:border-box;padding:.4rem;margin:.4rem 0 .8rem}
.error{color:#b3261e}
#result{min-height:1.2em}
""".strip() + "\n" + console_history.STYLE + "\n" + console_batches.STYLE

_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self'; "
    f"style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_PAGE_HEADERS = {
    "content-security-policy": _CSP,
    "cache-control": "no-store",
    # never a Referer to another site; our own POSTs keep their Origin (with no-referrer browsers send "null")
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}

_SCRIPT = r"""
"use strict";
(function () {
  var root = document.getElementById("console");
  if (!root) { return; }
  var selected = root.getAttribute("data-call-id") || "";
  var csrf = root.getAttribute("data-csrf") || "";
  var statusEl = document.getElementById("status");
  var liveBody = document.getElementById("live-calls");
  var recentBody = document.getElementById("recent-calls");
  var liveCount = document.getElementById("live-count");
  var transcript = document.getElementById("transcript");
  var resultEl = document.getElementById("result");
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button[data-action]"));

  function text(el, value) { el.textContent = value === null || value === undefined ? "" : String(value); }
  function duration(s) {
    if (s === null || s === undefined) { return "\u2013"; }
    var total = Math.floor(s), m = Math.floor(total / 60), r = total % 60;
    return m + ":" + (r < 10 ? "0" : "") + r;
  }
  function cost(c) { return "$" + Number(c || 0).toFixed(4); }
  function cell(tr, value, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    text(td, value);
    tr.appendChild(td);
    return td;
  }
  function row(call) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-call-id", call.call_id);
    if (call.call_id === selected) { tr.className = "selected"; }
    var first = document.createElement("td");
    var a = document.createElement("a");
    a.setAttribute("href", "/?call=" + encodeURIComponent(call.call_id));
    text(a, call.call_id);
    first.appendChild(a);
    tr.appendChild(first);
    cell(tr, call.profile);
    cell(tr, call.live ? call.state : (call.ended_reason || call.state));
    cell(tr, duration(call.duration_s), "num");
    cell(tr, cost(call.cost_usd), "num");
    cell(tr, call.caller || "withheld");
    return tr;
  }
  function fill(body, calls, emptyText) {
    while (body.firstChild) { body.removeChild(body.firstChild); }
    if (!calls.length) {
      var tr = document.createElement("tr");
      var td = cell(tr, emptyText, "muted");
      td.setAttribute("colspan", "6");
      body.appendChild(tr);
      return;
    }
    calls.forEach(function (c) { body.appendChild(row(c)); });
  }
  function showDetail(call) {
    if (!selected) { return; }
    var fields = document.querySelectorAll("[data-field]");
    Array.prototype.forEach.call(fields, function (el) {
      var name = el.getAttribute("data-field");
      if (!call) { return; }
      if (name === "state") { text(el, call.live ? call.state : "ended (" + (call.ended_reason || call.state) + ")"); }
      else if (name === "duration") { text(el, duration(call.duration_s)); }
      else if (name === "cost") { text(el, cost(call.cost_usd)); }
    });
    var live = !!(call && call.live);
    root.setAttribute("data-live", live ? "true" : "false");
    buttons.forEach(function (b) { b.disabled = !live || b.hasAttribute("data-no-targets"); });
  }
  function onCalls(ev) {
    var data = JSON.parse(ev.data);
    var live = data.calls.filter(function (c) { return c.live; });
    var ended = data.calls.filter(function (c) { return !c.live; }).slice(0, __RECENT__);
    text(liveCount, live.length);
    fill(liveBody, live, "No live calls.");
    fill(recentBody, ended, "None yet.");
    var mine = null;
    data.calls.forEach(function (c) { if (c.call_id === selected) { mine = c; } });
    showDetail(mine);
  }
  function onTranscript(ev) {
    var data = JSON.parse(ev.data);
    if (!transcript || data.call_id !== selected) { return; }
    if (data.reset) { while (transcript.firstChild) { transcript.removeChild(transcript.firstChild); } }
    data.lines.forEach(function (line) {
      var li = document.createElement("li");
      li.className = "line line-" + (line.role === "caller" ? "caller" : "assistant");
      var at = document.createElement("span");
      at.className = "at";
      text(at, duration(line.at_s));
      var role = document.createElement("span");
      role.className = "role role-" + (line.role === "caller" ? "caller" : "assistant");
      text(role, line.role);
      var said = document.createElement("span");
      said.className = "text";
      text(said, line.text);
      li.appendChild(at); li.appendChild(role); li.appendChild(said);
      transcript.appendChild(li);
    });
    var empty = document.getElementById("transcript-empty");
    if (empty) { empty.hidden = transcript.childNodes.length > 0; }
    transcript.scrollTop = transcript.scrollHeight;
  }
  function status(ok, message) {
    statusEl.className = ok ? "ok" : "bad";
    text(statusEl, message);
  }

  var url = "/v1/events" + (selected ? "?call_id=" + encodeURIComponent(selected) : "");
  var source = new EventSource(url);
  source.addEventListener("open", function () { status(true, "live"); });
  source.addEventListener("calls", onCalls);
  source.addEventListener("transcript", onTranscript);
  source.addEventListener("error", function () {
    var closed = source.readyState === EventSource.CLOSED;
    status(false, closed ? "disconnected \u2013 reload the page" : "reconnecting\u2026");
  });
  window.addEventListener("pagehide", function () { source.close(); });

  function post(path, body) {
    var init = {method: "POST", credentials: "same-origin", headers: {"__CSRF_HEADER__": csrf}};
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        text(resultEl, r.ok ? (j.status || "ok").replace(/_/g, " ") : "failed: " + (j.error || r.status));
      });
    }).catch(function (e) { text(resultEl, "failed: " + e); });
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function () {
      var base = "/v1/calls/" + encodeURIComponent(selected);
      var action = b.getAttribute("data-action");
      if (action === "hangup") { post(base + "/hangup"); }
      else if (action === "hangup-now") { post(base + "/hangup?now=true"); }
      else if (action === "transfer") {
        var target = document.getElementById("transfer-target").value;
        post(base + "/transfer", {target: target});
      }
      else if (action === "mute" || action === "unmute") { post(base + "/" + action); }
      else if (action === "say-now" || action === "say-next" || action === "context") {
        var box = document.getElementById("control-text");
        if (!box.value.trim()) { text(resultEl, "type the text first"); return; }
        if (action === "context") { post(base + "/context", {text: box.value}); }
        else { post(base + "/say", {text: box.value, when: action === "say-now" ? "now" : "next"}); }
      }
    });
  });
})();
""".replace("__RECENT__", str(RECENT_SHOWN)).replace("__CSRF_HEADER__", CSRF_HEADER).lstrip() + console_history.SCRIPT
_SCRIPT += console_batches.SCRIPT  # the Batches view (#16), last


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "\u2013"
    total = int(seconds)
    return f"{total // 60}:{total % 60:02d}"


def _cost(value: float) -> str:
    return f"${value:.4f}"


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _page(title: str, body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(_document(title, body), status_code=status, headers={**_PAGE_HEADERS, **(headers or {})})


def login_page(*, error: str | None = None, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    message = f'<p class="error" id="login-error">{_e(error)}</p>' if error else ""
    body = (
        '<section class="login"><h2>sip-controller &middot; live calls</h2>'
        "<p class=\"muted\">Sign in with the admin token (<code>SIPCTL_ADMIN_TOKEN</code>).</p>"
        f"{message}"
        '<form method="post" action="/login">'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>'
        '<button type="submit" id="login">Sign in</button></form></section>'
    )
    return _page("sip-controller · sign in", body, status, headers)


def _throttled(wait_s: float) -> HTMLResponse:
    after = retry_after_header(wait_s)
    return login_page(
        error=f"Too many wrong tokens from this address; try again in {after} s.",
        status=429,
        headers={"retry-after": after},
    )


def _forbidden(message: str) -> HTMLResponse:
    return _page("sip-controller · refused", f'<section class="login"><p class="error">{_e(message)}</p>'
                 '<p><a href="/">Back to the live calls</a></p></section>', 403)


def _row(summary: dict[str, Any], selected: str | None) -> str:
    call_id = summary["call_id"]
    state = summary["state"] if summary["live"] else summary["ended_reason"] or summary["state"]
    if summary.get("elsewhere"):
        state = f"{state} (on replica {summary.get('owner')})"
    cls = ' class="selected"' if call_id == selected else ""
    href = "/?" + urlencode({"call": call_id})
    return (
        f'<tr data-call-id="{_e(call_id)}"{cls}><td><a href="{_e(href)}">{_e(call_id)}</a></td>'
        f"<td>{_e(summary['profile'])}</td><td>{_e(state)}</td>"
        f'<td class="num">{_e(_duration(summary["duration_s"]))}</td>'
        f'<td class="num">{_e(_cost(summary["cost_usd"]))}</td>'
        f"<td>{_e(summary['caller'] or 'withheld')}</td></tr>"
    )


def _table(table_id: str, rows: list[dict[str, Any]], selected: str | None, empty: str) -> str:
    inner = "".join(_row(r, selected) for r in rows) or f'<tr><td colspan="6" class="muted">{_e(empty)}</td></tr>'
    return (
        '<div class="scroll"><table><thead><tr><th>Call</th><th>Profile</th><th>State</th><th class="num">Duration</th>'
        f'<th class="num">Cost</th><th>Caller</th></tr></thead><tbody id="{table_id}">{inner}</tbody></table></div>'
    )


def _detail(record: CallRecord | None, summary: dict[str, Any] | None, call_id: str, targets: list[str]) -> str:
    if record is None or summary is None:
        return f'<section id="detail"><h2>Call {_e(call_id)}</h2><p class="error">No such call.</p></section>'
    live = summary["live"]
    state = summary["state"] if live else f"ended ({summary['ended_reason'] or summary['state']})"
    disabled = "" if live else " disabled"
    lines = "".join(
        f'<li class="line line-{_e(t.role)}"><span class="at">{_e(_duration(t.at_s))}</span>'
        f'<span class="role role-{_e(t.role)}">{_e(t.role)}</span><span class="text">{_e(t.text)}</span></li>'
        for t in record.transcripts
    )
    if targets:
        options = "".join(f'<option value="{_e(t)}">{_e(t)}</option>' for t in targets)
        transfer = (
            f'<label for="transfer-target">Transfer to</label><select id="transfer-target">{options}</select>'
            f'<button type="button" id="transfer" data-action="transfer"{disabled}>Transfer</button>'
        )
    else:
        transfer = '<span class="muted">no transfer targets in this profile</span>'
    return (
        f'<section id="detail"><h2>Call <span id="detail-call-id">{_e(record.call_id)}</span></h2>'
        f"<dl><dt>Profile</dt><dd>{_e(record.profile)}</dd>"
        f'<dt>State</dt><dd id="detail-state" data-field="state">{_e(state)}</dd>'
        f'<dt>Duration</dt><dd data-field="duration">{_e(_duration(summary["duration_s"]))}</dd>'
        f'<dt>Cost</dt><dd data-field="cost">{_e(_cost(summary["cost_usd"]))}</dd>'
        f"<dt>Caller</dt><dd>{_e(summary['caller'] or 'withheld')}</dd></dl>"
        '<div class="actions">'
        f'<button type="button" class="danger" id="hangup" data-action="hangup"{disabled}'
        ' title="the agent says goodbye, then hangs up">Hang up</button>'
        f'<button type="button" class="danger" id="hangup-now" data-action="hangup-now"{disabled}>Hang up now</button>'
        f"{transfer}</div>"
        '<div class="actions">'
        '<label for="control-text">Line or context</label>'
        f'<input id="control-text" type="text" maxlength="{MAX_CONTEXT_CHARS}" autocomplete="off"{disabled}>'
        f'<button type="button" id="say-now" data-action="say-now"{disabled}'
        ' title="the agent says exactly this line now, cutting off what it is saying">Say now</button>'
        f'<button type="button" id="say-next" data-action="say-next"{disabled}'
        ' title="the agent says exactly this line after the answer in progress">Say next</button>'
        f'<button type="button" id="context" data-action="context"{disabled}'
        ' title="a system message the agent sees from now on">Add context</button>'
        f'<button type="button" id="mute" data-action="mute"{disabled}'
        ' title="the agent stops answering on its own; the caller is still transcribed">Mute</button>'
        f'<button type="button" id="unmute" data-action="unmute"{disabled}>Unmute</button></div>'
        '<p id="result" class="muted" role="status"></p>'
        '<h2>Transcript</h2>'
        f'<p id="transcript-empty" class="muted"{" hidden" if lines else ""}>Nothing said yet.</p>'
        f'<ol id="transcript">{lines}</ol></section>'
    )


class _Streams:
    """Counts the open event streams of one app."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def acquire(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


class _EventStream(StreamingResponse):
    """A streaming response that gives its slot back however it ends (even if it never started)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def _sse(event: str, data: Any) -> str:
    # json.dumps escapes every line break, so one event is always one data line
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def routes(
    auth: AdminAuth,
    runtime: Callable[[Request], Any],
    *,
    max_streams: int = 20,
    snapshot_interval_s: float = 1.0,
    tick_s: float = 0.25,
    max_stream_s: float = 300.0,
) -> list[Route]:
    """``runtime(request)`` gives the app's Runtime (or None while starting). The admin token guards everything
    but ``/console.js`` (static, no data)."""
    streams = _Streams(max_streams)

    def _runtime(request: Request) -> Any:
        try:
            return runtime(request)
        except AttributeError:
            return None

    async def _form(request: Request) -> dict[str, str] | None:
        """A small url-encoded form body (None when it is too large)."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > LOGIN_MAX_BODY:
                return None
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))

    async def _snapshot(request: Request) -> list[dict[str, Any]]:
        rt = _runtime(request)
        registry = rt.registry
        live_ids = {r.call_id for r in registry.live_records()}
        rows = [call_summary(r, live=r.call_id in live_ids) for r in registry.records()]
        live = [r for r in rows if r["live"]]
        ended = [r for r in rows if not r["live"]]
        ended.reverse()  # newest first
        return live + await _elsewhere(rt, {r["call_id"] for r in rows}) + ended[:RECENT_SHOWN]

    async def _elsewhere(rt: Any, known: set[str]) -> list[dict[str, Any]]:
        """The live calls other replicas supervise (from the shared store): listed, but their transcript streams
        only from the replica that owns them."""
        store = history.cluster_store(rt)
        if store is None:
            return []
        try:
            rows = await store.list_live(limit=history.MAX_LIVE)
        except StoreError as exc:
            log.warning("console.store_failed", error=str(exc)[:300])
            return []
        now = time.time()
        return [{**history.row_summary(r, now), "elsewhere": True} for r in rows if r.call_id not in known]

    async def index(request: Request) -> Response:
        if not auth.enabled:
            return _page("not found", "<p>Not found.</p>", 404)
        token = request.query_params.get("token")
        if token is not None:
            ok, wait = await auth.try_token(request, token)
            if not ok:
                return _throttled(wait) if wait > 0 else login_page(error="That token is not valid.", status=401)
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            response = RedirectResponse("/" + ("?" + urlencode(rest) if rest else ""), status_code=303)
            response.headers.update({"cache-control": "no-store", "referrer-policy": "no-referrer"})
            await auth.start_session(request, response)
            return response
        if await auth.authorize(request) is not None:
            return login_page()
        session: Session | None = request.state.session
        csrf = session.csrf if session is not None else ""
        rt = _runtime(request)
        if rt is None:
            return _page("starting", "<p>The service is starting; reload in a moment.</p>", 503)
        registry = rt.registry
        selected = request.query_params.get("call") or None
        rows = await _snapshot(request)
        live = [r for r in rows if r["live"]]
        ended = [r for r in rows if not r["live"]]
        detail = ""
        if selected is not None:
            record = registry.get(selected)
            summary = next((r for r in rows if r["call_id"] == selected), None)
            if record is not None and summary is None:
                summary = call_summary(record, live=registry.supervisor(selected) is not None)
            supervisor = registry.supervisor(selected)
            targets = list(supervisor.machine.profile.transfer.targets) if supervisor is not None else []
            detail = _detail(record, summary, selected, targets)
        body = (
            "<header><h1>sip-controller</h1>"
            f"{console_history.nav(len(live))}"
            '<span id="status" class="muted">connecting&hellip;</span>'
            '<form method="post" action="/logout">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            '<button type="submit" id="logout">Sign out</button></form>'
            "</header>"
            f'<main id="console" class="{"" if selected else "narrow"}" data-call-id="{_e(selected or "")}"'
            f' data-csrf="{_e(csrf)}">'
            '<div><section><h2>Live calls</h2><p class="muted">Every replica&rsquo;s live calls are listed; a '
            "call&rsquo;s live transcript shows only on the replica that owns it.</p>"
            f'{_table("live-calls", live, selected, "No live calls.")}</section>'
            '<section><h2>Recently ended</h2>'
            f'{_table("recent-calls", ended, selected, "None yet.")}</section></div>'
            f"{detail}</main>"
            f"{console_history.pane(rt.settings.profiles)}"
            f"{console_batches.pane()}"
            '<script src="/console.js"></script>'
        )
        return _page("sip-controller · live calls", body)

    async def login(request: Request) -> Response:
        if not auth.enabled:
            return _page("not found", "<p>Not found.</p>", 404)
        if not same_origin(request):
            return _forbidden("Sign in from this service's own page.")
        if (wait := await auth.throttle_wait(request)) > 0:
            return _throttled(wait)
        fields = await _form(request)
        if fields is None:
            return login_page(error="The request is too large.", status=413)
        ok, wait = await auth.try_token(request, fields.get("token", "").strip())
        if not ok:
            return _throttled(wait) if wait > 0 else login_page(error="That token is not valid.", status=401)
        response = RedirectResponse("/", status_code=303)
        response.headers["cache-control"] = "no-store"
        await auth.start_session(request, response)
        return response

    async def logout(request: Request) -> Response:
        if not auth.enabled:
            return _page("not found", "<p>Not found.</p>", 404)
        if not same_origin(request):
            return _forbidden("Sign out from this service's own page.")
        session = await auth.session(request)
        if session is not None:
            fields = await _form(request)
            presented = request.headers.get(CSRF_HEADER) or (fields or {}).get("csrf")
            if not session.csrf_matches(presented):
                return _forbidden("This sign-out form is out of date: reload the page and sign out again.")
        response = RedirectResponse("/", status_code=303)
        response.headers["cache-control"] = "no-store"
        await auth.end_session(request, response)
        return response

    async def script(request: Request) -> Response:
        if not auth.enabled:
            return _page("not found", "<p>Not found.</p>", 404)
        return Response(
            _SCRIPT,
            media_type="text/javascript",
            headers={"cache-control": "no-cache", "x-content-type-options": "nosniff"},
        )

    async def events(request: Request) -> Response:
        if (denied := await auth.authorize(request)) is not None:
            return denied
        session: Session | None = request.state.session
        rt = _runtime(request)
        if rt is None:
            return JSONResponse({"error": "starting"}, status_code=503, headers={"retry-after": "1"})
        registry = rt.registry
        call_id = request.query_params.get("call_id") or None
        if call_id is not None and registry.get(call_id) is None:
            return JSONResponse({"error": "no such call"}, status_code=404)
        if not streams.acquire():
            return JSONResponse(
                {"error": f"too many open event streams (at most {streams.limit})"},
                status_code=503,
                headers={"retry-after": "5"},
            )
        try:
            generator = _stream(request, registry, call_id, session)
            return _EventStream(
                generator,
                streams.release,
                headers={"cache-control": "no-store", "x-accel-buffering": "no"},
            )
        except BaseException:
            streams.release()
            raise

    async def _stream(
        request: Request, registry: Any, call_id: str | None, session: Session | None
    ) -> AsyncIterator[str]:
        started = time.monotonic()
        last_snapshot = float("-inf")
        sent: int | None = None  # transcript lines sent so far; None until the first (resetting) event
        yield "retry: 2000\n\n"
        while True:
            if await request.is_disconnected():
                return
            if registry.draining and registry.live_count == 0:
                return  # shutting down: do not hold uvicorn's graceful shutdown open
            now = time.monotonic()
            if now - last_snapshot >= snapshot_interval_s:
                if session is not None and not await auth.sessions.alive(session):
                    return  # signed out (or expired): the reconnect is answered 401
                last_snapshot = now
                yield _sse("calls", {"calls": await _snapshot(request)})
            if call_id is not None:
                record = registry.get(call_id)
                if record is not None:
                    start = sent or 0
                    lines = record.transcripts[start:]
                    if lines or sent is None:
                        yield _sse(
                            "transcript",
                            {
                                "call_id": call_id,
                                "reset": sent is None,
                                "lines": [{"role": t.role, "text": t.text, "at_s": t.at_s} for t in lines],
                            },
                        )
                        sent = start + len(lines)
            if now - started >= max_stream_s:
                return  # the browser reconnects (retry above) and gets a fresh snapshot
            await asyncio.sleep(tick_s)

    return [
        Route("/", index, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/console.js", script, methods=["GET"]),
        Route("/v1/events", events, methods=["GET"]),
    ]
