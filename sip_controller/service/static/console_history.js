/* The call history in the operator console (#17): the Calls view, a call's page and the Overview.
   Hash routes: #/live, #/calls?<filters>, #/calls/<call_id>, #/overview?range=<preset>. Everything from a call
   is set with textContent, never parsed as markup; the charts are inline SVG drawn here (no external assets). */
"use strict";
(function () {
  var pane = document.getElementById("history");
  var live = document.getElementById("console");
  if (!pane || !live) { return; }
  var csrf = live.getAttribute("data-csrf") || "";
  var csrfHeader = pane.getAttribute("data-csrf-header") || "x-csrf-token";
  var profiles = JSON.parse(pane.getAttribute("data-profiles") || "[]");
  var reasons = JSON.parse(pane.getAttribute("data-reasons") || "[]");
  var SVG = "http://www.w3.org/2000/svg";
  var PAGE = 25;
  var RANGES = [["1h", "last hour", 3600], ["24h", "last 24 hours", 86400], ["7d", "last 7 days", 7 * 86400],
                ["30d", "last 30 days", 30 * 86400], ["90d", "last 90 days", 90 * 86400], ["all", "all time", 0]];
  var OVERVIEW_RANGES = RANGES.filter(function (r) { return r[0] !== "all" && r[0] !== "1h"; });
  var ENDED_BY = {
    caller_hangup: "the caller", agent_end_call: "the agent", operator_hangup: "an operator",
    transferred: "a transfer", transfer_failed: "a failed transfer", max_duration: "the duration limit",
    silence_timeout: "the silence timeout", budget_exceeded: "the cost budget", session_error: "a session error",
    model_error: "a model error", session_limit: "OpenAI's session limit", accept_failed: "a failed accept",
    rejected: "the controller (rejected)", shutdown: "a shutdown", no_answer: "no answer", busy: "a busy line",
    failed: "Twilio (failed)", canceled: "a cancellation", voicemail: "an answering machine"
  };
  var COLORS = ["#1a56c4", "#f0a030", "#2f9e5a", "#b3261e", "#7b4fc9", "#0e8f9e", "#9a6b00", "#5d6b82"];

  // ---- small helpers -------------------------------------------------------------------------------------
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } return node; }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function when(iso) {
    if (!iso) { return "\u2013"; }
    var d = new Date(iso);
    if (isNaN(d.getTime())) { return String(iso); }
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function short(iso) {  // this year's dates without the year
    var d = new Date(iso);
    if (!iso || isNaN(d.getTime()) || d.getFullYear() !== new Date().getFullYear()) { return when(iso); }
    return when(iso).slice(5);
  }
  function clock(s) {
    if (s === null || s === undefined) { return "\u2013"; }
    var t = Math.max(0, Math.floor(s)), m = Math.floor(t / 60), r = t % 60;
    return m + ":" + pad(r);
  }
  function span(s) {  // a call's length: tenths under ten seconds, m:ss above
    if (s === null || s === undefined) { return "\u2013"; }
    return s < 10 ? Number(s).toFixed(1) + " s" : clock(s);
  }
  function offset(s) {  // when in the call: m:ss.s
    var t = Math.max(0, Number(s) || 0), m = Math.floor(t / 60), r = t - 60 * m;
    return m + ":" + (r < 10 ? "0" : "") + r.toFixed(1);
  }
  function usd(v, digits) {
    return v === null || v === undefined ? "\u2013" : "$" + Number(v).toFixed(digits === undefined ? 4 : digits);
  }
  function pct(v) { return v === null || v === undefined ? "\u2013" : (100 * v).toFixed(1) + " %"; }
  function ms(v) { return v === null || v === undefined ? "\u2013" : Math.round(v) + " ms"; }
  function parseQuery(text) {
    var out = {};
    (text || "").split("&").forEach(function (part) {
      if (!part) { return; }
      var i = part.indexOf("=");
      var k = decodeURIComponent((i < 0 ? part : part.slice(0, i)).replace(/\+/g, " "));
      out[k] = i < 0 ? "" : decodeURIComponent(part.slice(i + 1).replace(/\+/g, " "));
    });
    return out;
  }
  function query(params) {
    return Object.keys(params).filter(function (k) {
      return params[k] !== "" && params[k] !== null && params[k] !== undefined;
    }).map(function (k) { return encodeURIComponent(k) + "=" + encodeURIComponent(params[k]); }).join("&");
  }
  function getJSON(path) {
    return fetch(path, {credentials: "same-origin", headers: {accept: "application/json"}}).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) { throw new Error(body.error || ("HTTP " + r.status)); }
        return body;
      });
    });
  }
  function setState(node, state, message) {
    node.setAttribute("data-state", state);
    var note = node.querySelector(".load-note");
    if (note) { note.textContent = message || ""; note.className = "load-note " + (state === "error" ? "error" : "muted"); }
  }
  function section(title, id) {
    var s = el("section", id ? {id: id} : {});
    s.appendChild(el("h2", {}, title));
    return s;
  }
  function dl(rows) {
    var list = el("dl");
    rows.forEach(function (row) {
      if (row[1] === undefined) { return; }
      list.appendChild(el("dt", {}, row[0]));
      var dd = el("dd", row[2] ? {id: row[2]} : {});
      if (row[1] instanceof Node) { dd.appendChild(row[1]); } else { dd.textContent = row[1] === null ? "\u2013" : String(row[1]); }
      list.appendChild(dd);
    });
    return list;
  }
  function select(id, options, value) {
    var s = el("select", {id: id});
    options.forEach(function (o) {
      var opt = el("option", {value: o[0]}, o[1]);
      if (o[0] === value) { opt.selected = true; }
      s.appendChild(opt);
    });
    return s;
  }
  function labelled(text, control) {
    var l = el("label", {}, text);
    l.appendChild(control);
    return l;
  }
  function rangeSince(key) {
    var found = RANGES.filter(function (r) { return r[0] === key; })[0];
    return found && found[2] ? Math.floor(Date.now() / 1000) - found[2] : null;
  }

  // ---- routing -------------------------------------------------------------------------------------------
  var navLinks = Array.prototype.slice.call(document.querySelectorAll("nav a[data-view]"));
  var generation = 0;  // a newer route wins over an older one's late answer
  function route() {
    var hash = window.location.hash.replace(/^#/, "");
    var qi = hash.indexOf("?");
    var path = qi < 0 ? hash : hash.slice(0, qi);
    var params = parseQuery(qi < 0 ? "" : hash.slice(qi + 1));
    var parts = path.split("/").filter(function (p) { return p; });
    var view = parts[0] === "calls" ? (parts.length > 1 ? "call" : "calls") : parts[0] === "overview" ? "overview" : "live";
    if (parts[0] === "batches") { view = "batches"; }  // drawn by console_batches.js (#16)
    navLinks.forEach(function (a) {
      var current = a.getAttribute("data-view") === (view === "call" ? "calls" : view);
      a.className = current ? "current" : "";
      if (current) { a.setAttribute("aria-current", "page"); } else { a.removeAttribute("aria-current"); }
    });
    live.hidden = view !== "live";
    pane.hidden = view === "live" || view === "batches";
    generation += 1;
    if (view === "live" || view === "batches") { clear(pane); return; }
    clear(pane);
    pane.setAttribute("data-view", view);
    if (view === "calls") { callsView(params, generation); }
    else if (view === "call") { callView(decodeURIComponent(parts.slice(1).join("/")), generation); }
    else { overviewView(params, generation); }
  }
  function current(gen) { return gen === generation; }
  window.addEventListener("hashchange", route);

  // ---- the Calls view ------------------------------------------------------------------------------------
  function filtersOf(params) {
    return {range: params.range || "24h", ended_reason: params.ended_reason || "", profile: params.profile || "",
            outcome: params.outcome || "", q: params.q || ""};
  }
  function apiFilters(f) {
    var since = rangeSince(f.range);
    return {since: since === null ? "" : since, ended_reason: f.ended_reason, profile: f.profile,
            outcome: f.outcome, q: f.q};
  }
  function callsView(params, gen) {
    var f = filtersOf(params);
    var box = section("Calls", "calls");
    var form = el("form", {"class": "filters", id: "calls-filters"});
    var rangeSel = select("filter-range", RANGES.map(function (r) { return [r[0], r[1]]; }), f.range);
    var reasonSel = select("filter-reason", [["", "any"]].concat(reasons.map(function (r) { return [r, r]; })), f.ended_reason);
    var profileSel = select("filter-profile", [["", "any"]].concat(profiles.map(function (p) { return [p, p]; })), f.profile);
    var outcomeSel = select("filter-outcome", [["", "any"], ["succeeded", "succeeded"], ["failed", "failed"],
                                               ["unknown", "not analysed"]], f.outcome);
    var search = el("input", {id: "filter-q", type: "search", placeholder: "words said in the call", maxlength: "200"});
    search.value = f.q;
    form.appendChild(labelled("Ended", rangeSel));
    form.appendChild(labelled("Ended reason", reasonSel));
    form.appendChild(labelled("Profile", profileSel));
    form.appendChild(labelled("Outcome", outcomeSel));
    form.appendChild(labelled("Transcript search", search));
    form.appendChild(el("button", {type: "submit", id: "filter-apply"}, "Search"));
    var exports = el("span", {"class": "muted"}, "Export: ");
    var apiQuery = query(apiFilters(f));
    [["csv", "CSV"], ["jsonl", "JSONL"]].forEach(function (x, i) {
      if (i) { exports.appendChild(document.createTextNode(" \u00b7 ")); }
      exports.appendChild(el("a", {id: "export-" + x[0], download: "",
        href: "/v1/calls/export?" + query({format: x[0]}) + (apiQuery ? "&" + apiQuery : "")}, x[1]));
    });
    form.appendChild(exports);
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var next = {range: rangeSel.value, ended_reason: reasonSel.value, profile: profileSel.value,
                  outcome: outcomeSel.value, q: search.value.trim()};
      var target = "#/calls?" + query(next);
      if (window.location.hash === target) { route(); } else { window.location.hash = target; }
    });
    [rangeSel, reasonSel, profileSel, outcomeSel].forEach(function (s) {
      s.addEventListener("change", function () { form.dispatchEvent(new Event("submit", {cancelable: true})); });
    });
    box.appendChild(form);
    var scroll = el("div", {"class": "scroll"});
    var table = el("table", {id: "calls-table"});
    var head = el("tr");
    ["Call", "Ended", "Profile", "Ended reason", "Outcome", "Duration", "Cost", "Caller", "Summary"].forEach(function (h) {
      head.appendChild(el("th", h === "Duration" || h === "Cost" ? {"class": "num"} : {}, h));
    });
    var thead = el("thead"); thead.appendChild(head); table.appendChild(thead);
    var body = el("tbody", {id: "calls-body"});
    table.appendChild(body);
    scroll.appendChild(table);
    box.appendChild(scroll);
    var pager = el("div", {"class": "pager"});
    var newer = el("button", {type: "button", id: "page-newer"}, "\u2190 Newer");
    var older = el("button", {type: "button", id: "page-older"}, "Older \u2192");
    var note = el("span", {"class": "load-note muted grow"});
    pager.appendChild(newer); pager.appendChild(note); pager.appendChild(older);
    box.appendChild(pager);
    pane.appendChild(box);

    var cursors = [null];  // the cursor of each page shown so far; the last is the current page's
    function load() {
      var cursor = cursors[cursors.length - 1];
      var params2 = apiFilters(f);
      var per = parseInt(params.per || "", 10);  // #/calls?per=N: calls a page (1 to 200)
      params2.limit = per >= 1 && per <= 200 ? per : PAGE;
      if (cursor) { params2.cursor = cursor; }
      setState(box, "loading", "loading\u2026");
      newer.disabled = true; older.disabled = true;
      getJSON("/v1/calls?" + query(params2)).then(function (page) {
        if (!current(gen)) { return; }
        clear(body);
        page.calls.forEach(function (c) { body.appendChild(callRow(c)); });
        if (!page.calls.length) {
          var tr = el("tr"); tr.appendChild(el("td", {colspan: "9", "class": "muted"}, "No calls match."));
          body.appendChild(tr);
        }
        older.disabled = !page.next_cursor;
        older.onclick = function () { cursors.push(page.next_cursor); load(); };
        newer.disabled = cursors.length < 2;
        newer.onclick = function () { cursors.pop(); load(); };
        setState(box, "ready", "page " + cursors.length + (page.calls.length ? "" : " (empty)"));
      }).catch(function (e) {
        if (current(gen)) { setState(box, "error", "could not load the calls: " + e.message); }
      });
    }
    load();
  }
  function callRow(c) {
    var tr = el("tr", {"data-call-id": c.call_id});
    var idCell = el("td");
    var shown = c.call_id.length > 22 ? c.call_id.slice(0, 14) + "\u2026" + c.call_id.slice(-6) : c.call_id;
    idCell.appendChild(el("a", {title: c.call_id,
      href: c.live ? "/?call=" + encodeURIComponent(c.call_id) : "#/calls/" + encodeURIComponent(c.call_id)}, shown));
    tr.appendChild(idCell);
    tr.appendChild(el("td", {title: c.ended || ""}, c.live ? "live" : short(c.ended)));
    tr.appendChild(el("td", {}, c.profile));
    tr.appendChild(el("td", {}, c.live ? c.state : c.ended_reason || c.state));
    var outcome = el("td");
    outcome.appendChild(outcomeBadge(c.live ? "live" : c.outcome));
    tr.appendChild(outcome);
    tr.appendChild(el("td", {"class": "num"}, span(c.duration_s)));
    tr.appendChild(el("td", {"class": "num"}, usd(c.cost_usd)));
    var caller = el("td", {"class": "caller"});
    var number = el("span", {"class": "number"}, c.caller || "withheld");
    caller.appendChild(number);
    if (c.caller) {
      var reveal = el("button", {type: "button", "class": "reveal", title: "show the full number (the reveal is logged)"}, "Reveal");
      reveal.addEventListener("click", function () { revealCaller(c.call_id, number, reveal); });
      caller.appendChild(reveal);
    }
    tr.appendChild(caller);
    var summary = c.analysis_summary || "";
    tr.appendChild(el("td", {"class": "summary", title: summary}, summary.length > 140 ? summary.slice(0, 139) + "\u2026" : summary));
    return tr;
  }
  function outcomeBadge(outcome) {
    var names = {succeeded: "succeeded", failed: "failed", live: "live"};
    return el("span", {"class": "badge " + (names[outcome] || "unknown")}, names[outcome] || "\u2013");
  }
  function revealCaller(callId, target, button) {
    button.disabled = true;
    var headers = {};
    headers[csrfHeader] = csrf;
    fetch("/v1/calls/" + encodeURIComponent(callId) + "/reveal", {method: "POST", credentials: "same-origin", headers: headers})
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (j) {
          if (!r.ok) { throw new Error(j.error || ("HTTP " + r.status)); }
          target.textContent = j.caller || "withheld";
          target.className = "number revealed";
          button.parentNode.removeChild(button);
        });
      }).catch(function (e) { button.disabled = false; button.title = "failed: " + e.message; });
  }

  // ---- a call's page -------------------------------------------------------------------------------------
  function callView(callId, gen) {
    var box = section("Call " + callId, "call");
    box.setAttribute("data-call-id", callId);
    var back = el("p");
    back.appendChild(el("a", {href: "#/calls"}, "\u2190 all calls"));
    box.appendChild(back);
    box.appendChild(el("p", {"class": "load-note muted"}, "loading\u2026"));
    pane.appendChild(box);
    setState(box, "loading", "loading\u2026");
    getJSON("/v1/calls/" + encodeURIComponent(callId)).then(function (report) {
      if (!current(gen)) { return; }
      renderCall(box, report);
      setState(box, "ready", "");
    }).catch(function (e) {
      if (current(gen)) { setState(box, "error", "could not load the call: " + e.message); }
    });
  }
  function renderCall(box, report) {
    var grid = el("div", {"class": "callgrid"});
    var left = el("div"), right = el("div");
    grid.appendChild(left); grid.appendChild(right);
    box.appendChild(grid);
    var ts = report.timestamps || {};
    var timings = report.timings || {};
    var reason = report.ended_reason;
    var facts = dl([
      ["Profile", report.profile],
      ["Started", when(ts.received_at || report.started)],
      ["Ended", when(ts.ended_at || report.ended)],
      ["Duration", span(timings.duration_s !== undefined ? timings.duration_s : report.duration_s)],
      ["Ended reason", reason || report.state, "call-ended-reason"],
      ["Ended by", reason ? ENDED_BY[reason] || reason : "\u2013", "call-ended-by"],
      ["Caller", report.caller || "withheld"],
      ["Dialed", report.dialed || "\u2013"],
      ["Ring to answer", ms(timings.webhook_to_accept_ms)],
      ["Transfer", report.transfer && report.transfer.target ? report.transfer.target + " (" + (report.transfer.outcome || "?") + ")" : undefined],
      ["Parked on Twilio", report.parked ? span(report.parked.parked_s || 0) + " (" + (report.legs || []).length + " OpenAI sessions)" : undefined, "call-parked"]
    ]);
    var about = section("About the call");
    about.appendChild(facts);
    var recording = recordingUrl(report);
    if (recording) {
      var p = el("p");
      p.appendChild(el("a", {href: recording, id: "recording-link", rel: "noreferrer noopener", target: "_blank"}, "Twilio recording"));
      about.appendChild(p);
    }
    if (report.live || (!report.ended_reason && report.state && report.state !== "ended")) {  // not over yet
      var lp = el("p");
      lp.appendChild(el("a", {href: "/?call=" + encodeURIComponent(report.call_id)}, "This call is live: open it in the live view"));
      about.appendChild(lp);
    }
    right.appendChild(about);
    if (report.legs && report.legs.length) { right.appendChild(legsSection(report)); }
    right.appendChild(analysisSection(report.analysis));
    right.appendChild(costSection(report));
    var chat = section("Timeline", "timeline");
    var items = timelineItems(report);
    if (!items.length) { chat.appendChild(el("p", {"class": "muted"}, "Nothing was said.")); }
    var list = el("ol", {"class": "chat", id: "chat"});
    items.forEach(function (item) { list.appendChild(item.node); });
    chat.appendChild(list);
    left.appendChild(chat);
    var raw = section("Raw report");
    var details = el("details", {id: "raw-report"});
    details.appendChild(el("summary", {}, "JSON"));
    details.appendChild(el("pre", {"class": "raw"}, JSON.stringify(report, null, 2)));
    raw.appendChild(details);
    left.appendChild(raw);
  }
  function legsSection(report) {  // a call parked on Twilio between OpenAI sessions (#16)
    var box = section("OpenAI sessions", "legs");
    var list = el("ol", {id: "legs-list"});
    report.legs.forEach(function (leg) {
      list.appendChild(el("li", {}, String(leg.call_id) + ": " + span(leg.duration_s || 0) + ", " + (leg.ended_reason || "?") +
        ", " + usd(leg.cost_usd)));
    });
    box.appendChild(list);
    var parked = report.parked;
    if (parked) {
      box.appendChild(dl([
        ["Twilio listening", usd(parked.listen_cost_usd), "park-listen"],
        ["Person checks", usd(parked.check_cost_usd)],
        ["Hold mode would have cost", usd(parked.hold_mode_cost_usd)],
        ["Saved by parking", usd(parked.cost_saved_usd), "park-saved"]
      ]));
    }
    return box;
  }
  function recordingUrl(report) {
    var tw = report.twilio || {};
    var candidates = [report.recording_url, report.recording && report.recording.url, tw.recording_url,
                      tw.recording && tw.recording.url];
    for (var i = 0; i < candidates.length; i++) {
      var c = candidates[i];
      if (typeof c === "string" && /^https?:\/\//.test(c)) { return c; }
    }
    return null;
  }
  function chatItem(cls, at, label, text) {
    var li = el("li", {"class": cls});
    li.appendChild(el("span", {"class": "at"}, offset(at) + (label ? " \u00b7 " + label : "")));
    if (text !== null && text !== undefined) { li.appendChild(el("span", {"class": "text"}, text)); }
    return li;
  }
  function pretty(value) {
    if (value === null || value === undefined) { return ""; }
    if (typeof value === "string") {
      try { return JSON.stringify(JSON.parse(value), null, 2); } catch (e) { return value; }
    }
    return JSON.stringify(value, null, 2);
  }
  // the report's timeline entries drawn in the chat (the others are already there: turns, tools, transfers, the end)
  var TIMELINE_SHOWN = /^(control:|operator transfer|hold mode|hold too long|max duration|silence:|idle timeout|cost budget|wrap-up|keypad:)/;
  function timelineItems(report) {
    var items = [];
    var seq = 0;
    function push(at, node, kind) { items.push({at: at || 0, seq: seq++, node: node, kind: kind || ""}); }
    function event(at, text, cls) { push(at, chatItem("event" + (cls ? " " + cls : ""), at, null, text)); }
    var timings = report.timings || {};
    if (typeof timings.webhook_to_accept_ms === "number") {
      var answered = "answered " + timings.webhook_to_accept_ms + " ms after it rang";
      event(timings.webhook_to_accept_ms / 1000, answered + (report.answered_by ? " (by a " + report.answered_by + ")" : ""));
    }
    (report.transcript || []).forEach(function (t) {
      var role = t.role === "caller" || t.role === "keypad" ? t.role : "assistant";
      push(t.at_s, chatItem(role, t.at_s, role, t.text), role);
    });
    var transferAt = null;
    (report.tool_calls || []).forEach(function (t) {
      var li = chatItem("tool", t.at_s, "tool call " + t.name + " \u2192 " + (t.outcome || "?"), null);
      li.appendChild(el("div", {"class": "muted"}, "arguments"));
      li.appendChild(el("pre", {"class": "args"}, pretty(t.arguments)));
      if (t.result !== null && t.result !== undefined) {
        li.appendChild(el("div", {"class": "muted"}, "result"));
        li.appendChild(el("pre", {"class": "result"}, pretty(t.result)));
      }
      if (t.detail) { li.appendChild(el("div", {"class": "muted"}, t.detail)); }
      push(t.at_s, li);
      if (t.name === "transfer_call") { transferAt = t.at_s; }
    });
    (report.timeline || []).forEach(function (m) {  // what the chat does not show otherwise: operators, watchdogs, hold
      if (TIMELINE_SHOWN.test(String(m.event))) { event(m.at_s, String(m.event), "mark"); }
    });
    (report.barge_ins || []).forEach(function (b) {
      event(b.at_s, "the caller talked over the " + b.line + " line (" + String(b.then).replace(/_/g, " ") + ")");
    });
    (report.failed_responses || []).forEach(function (f) {
      event(f.at_s, "a response " + f.status + (f.reason ? " (" + f.reason + ")" : "") + (f.purpose ? ": the " + f.purpose : ""));
    });
    var ended = typeof timings.duration_s === "number" ? timings.duration_s : null;
    var transfer = report.transfer || {};
    if (transfer.target) {
      var left = transfer.outcome === "transferred" || transferAt === null;  // a transfer that worked ends the call
      event(left ? ended : transferAt, "transfer to " + transfer.target + ": " +
        String(transfer.outcome || "started").replace(/_/g, " "), "transfer");
    }
    var start = Date.parse((report.timestamps || {}).received_at || "");
    (report.takeovers || []).forEach(function (t) {
      var at = isNaN(start) ? 0 : (Date.parse(t.at) - start) / 1000;
      push(at, chatItem("event", at, null, "taken over by " + (t.by || "another replica") +
        (t.gap_s !== undefined ? " after " + Number(t.gap_s).toFixed(1) + " s without its owner" : "")));
    });
    if (report.ended_reason) {
      var hangup = report.hangup_confirmed === true ? "; OpenAI confirmed the hangup" :
        report.hangup_confirmed === false ? "; the hangup was not confirmed" : "";
      event(ended, "call ended: " + report.ended_reason + " (by " + (ENDED_BY[report.ended_reason] || report.ended_reason) +
        ")" + hangup, "end");
    }
    items.sort(function (a, b) { return a.at - b.at || a.seq - b.seq; });
    var merged = [];  // the digits of one keypad entry (pressed one by one) in one bubble
    items.forEach(function (item) {
      var last = merged[merged.length - 1];
      if (item.kind === "keypad" && last && last.kind === "keypad") {
        var text = last.node.querySelector(".text");
        text.textContent = text.textContent + item.node.querySelector(".text").textContent;
        return;
      }
      merged.push(item);
    });
    return merged;
  }
  function analysisSection(analysis) {
    var s = section("Analysis", "analysis");
    if (!analysis) { s.appendChild(el("p", {"class": "muted"}, "Not analysed.")); return s; }
    s.setAttribute("data-status", analysis.status || "");
    if (analysis.status !== "completed") {
      s.appendChild(dl([["Status", analysis.status], ["Why", analysis.error || "\u2013"]]));
      return s;
    }
    var verdict = analysis.success === true ? "succeeded" : analysis.success === false ? "failed" : "unknown";
    var badge = outcomeBadge(verdict);
    s.appendChild(el("p", {id: "analysis-summary"}, analysis.summary || ""));
    var rows = [["Outcome", badge, "analysis-outcome"], ["Why", analysis.success_reason || "\u2013"]];
    var fields = analysis.fields || {};
    Object.keys(fields).forEach(function (k) {
      var v = fields[k];
      rows.push([k, v === null ? "\u2013" : typeof v === "object" ? JSON.stringify(v) : String(v)]);
    });
    rows.push(["Model", analysis.model || "\u2013"]);
    rows.push(["Cost", usd(analysis.cost_usd, 6)]);
    s.appendChild(dl(rows));
    return s;
  }
  function costSection(report) {
    var s = section("Cost", "cost");
    var b = report.cost_breakdown || {};
    var order = ["model_usd", "transcription_usd", "call_usd", "analysis_usd", "total_usd"];
    var names = {model_usd: "Model", transcription_usd: "Transcription", call_usd: "Call (model and transcription)",
                 analysis_usd: "Analysis", total_usd: "Total"};
    var rows = [];
    order.concat(Object.keys(b).filter(function (k) { return order.indexOf(k) < 0 && /_usd$/.test(k); }))
      .forEach(function (k) { if (typeof b[k] === "number") { rows.push([names[k] || k, usd(b[k], 6)]); } });
    if (typeof report.transcription_cost_usd === "number" && typeof report.cost_usd === "number") {
      rows.unshift(["Transcription", usd(report.transcription_cost_usd, 6)]);
      rows.unshift(["Model", usd(report.cost_usd - report.transcription_cost_usd, 6)]);
    }
    if (!rows.length) { rows.push(["Total", usd(report.cost_usd, 6)]); }
    if (report.hold_cost_usd) { rows.push(["of which on hold", usd(report.hold_cost_usd, 6)]); }
    var u = report.usage;
    if (u) {
      rows.push(["Responses", u.responses]);
      rows.push(["Audio tokens in / out", (u.input_audio_tokens || 0) + " / " + (u.output_audio_tokens || 0)]);
      rows.push(["Text tokens in / out", (u.input_text_tokens || 0) + " / " + (u.output_text_tokens || 0)]);
      if (u.transcription) { rows.push(["Transcribed", (u.transcription.seconds || 0).toFixed(1) + " s"]); }
    }
    s.appendChild(dl(rows));
    return s;
  }

  // ---- the Overview --------------------------------------------------------------------------------------
  function overviewView(params, gen) {
    var key = OVERVIEW_RANGES.some(function (r) { return r[0] === params.range; }) ? params.range : "24h";
    var seconds = OVERVIEW_RANGES.filter(function (r) { return r[0] === key; })[0][2];
    var bucket = seconds <= 7 * 86400 ? "hour" : "day";
    var box = section("Overview", "overview");
    box.setAttribute("data-range", key);
    var picker = select("overview-range", OVERVIEW_RANGES.map(function (r) { return [r[0], r[1]]; }), key);
    picker.addEventListener("change", function () { window.location.hash = "#/overview?range=" + picker.value; });
    var bar = el("div", {"class": "filters"});
    bar.appendChild(labelled("Range", picker));
    bar.appendChild(el("span", {"class": "load-note muted"}));
    box.appendChild(bar);
    var tiles = el("div", {"class": "tiles", id: "overview-tiles"});
    var charts = el("div", {"class": "charts"});
    pane.appendChild(box);
    pane.appendChild(tiles);
    pane.appendChild(charts);
    var until = Math.floor(Date.now() / 1000);
    var since = until - seconds;
    setState(box, "loading", "loading\u2026");
    getJSON("/v1/overview?" + query({since: since, until: until, bucket: bucket})).then(function (o) {
      if (!current(gen)) { return; }
      [["Calls", String(o.calls), "tile-calls"],
       ["Ring to answer p50", ms(o.ring_to_answer_ms && o.ring_to_answer_ms.p50), "tile-p50"],
       ["Ring to answer p95", ms(o.ring_to_answer_ms && o.ring_to_answer_ms.p95), "tile-p95"],
       ["Average handle time", span(o.avg_handle_s), "tile-aht"],
       ["Transferred", pct(o.transfer_rate), "tile-transfer", o.transfer_rate],
       ["Succeeded (analysed calls)", pct(o.success_rate), "tile-success", o.success_rate]
      ].forEach(function (t) { tiles.appendChild(tile(t[0], t[1], t[2], t[3])); });
      var perBucket = (o.per_bucket || []).map(function (b) {
        var d = new Date(b.start);
        var day = (d.getMonth() + 1) + "/" + d.getDate();
        var label = bucket === "day" ? day : seconds > 86400 ? day + " " + pad(d.getHours()) + "h" : pad(d.getHours()) + ":00";
        return {label: label, value: b.calls, title: when(b.start) + ": " + b.calls + " calls"};
      });
      charts.appendChild(chartBox("Calls per " + bucket, "chart-calls", barChart(perBucket)));
      var mix = Object.keys(o.ended_reasons || {}).map(function (k) { return {label: k, value: o.ended_reasons[k]}; })
        .sort(function (a, b) { return b.value - a.value; });
      charts.appendChild(chartBox("How calls ended", "chart-reasons", hbarChart(mix)));
      var days = (o.cost_per_day || []).map(function (d) {
        return {label: d.day.slice(5), title: d.day, parts: [d.model_usd || 0, d.transcription_usd || 0, d.analysis_usd || 0]};
      });
      var costBox = chartBox("Cost per day (USD)", "chart-cost", stackedChart(days, ["#1a56c4", "#f0a030", "#2f9e5a"]));
      var legend = el("div", {"class": "legend"});
      [["model", "Model"], ["transcription", "Transcription"], ["analysis", "Analysis"]].forEach(function (x) {
        var item = el("span");
        item.appendChild(el("span", {"class": "swatch s-" + x[0]}));
        item.appendChild(document.createTextNode(x[1]));
        legend.appendChild(item);
      });
      costBox.appendChild(legend);
      charts.appendChild(costBox);
      charts.appendChild(chartBox("Ring to answer (ms)", "chart-ring",
        hbarChart([{label: "p50", value: (o.ring_to_answer_ms || {}).p50 || 0},
                   {label: "p95", value: (o.ring_to_answer_ms || {}).p95 || 0}])));
      setState(box, "ready", when(o.since) + " \u2013 " + when(o.until));
    }).catch(function (e) {
      if (current(gen)) { setState(box, "error", "could not load the overview: " + e.message); }
    });
  }
  function tile(label, value, id, rate) {
    var t = el("div", {"class": "tile", id: id});
    t.appendChild(el("div", {"class": "value"}, value));
    t.appendChild(el("div", {"class": "label"}, label));
    if (typeof rate === "number") {
      var meter = svg("svg", {"class": "chart", viewBox: "0 0 100 6", preserveAspectRatio: "none", role: "img"});
      meter.appendChild(svg("rect", {x: 0, y: 0, width: 100, height: 6, rx: 3, fill: "#eceef2"}));
      meter.appendChild(svg("rect", {x: 0, y: 0, width: Math.max(0, Math.min(1, rate)) * 100, height: 6, rx: 3, fill: "#2f9e5a"}));
      t.appendChild(meter);
    }
    return t;
  }
  function chartBox(title, id, chart) {
    var s = section(title, id);
    s.appendChild(chart);
    return s;
  }
  function niceMax(v) {
    if (!(v > 0)) { return 1; }
    var p = Math.pow(10, Math.floor(Math.log(v) / Math.LN10));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) { if (steps[i] * p >= v) { return steps[i] * p; } }
    return 10 * p;
  }
  function fmt(v) {
    if (v >= 100 || v === Math.round(v)) { return String(Math.round(v)); }
    return v >= 1 ? v.toFixed(1) : v.toPrecision(2);
  }
  var W = 560, H = 200, L = 44, B = 22, T = 8;
  function frame(max) {
    var root = svg("svg", {"class": "chart", viewBox: "0 0 " + W + " " + H, role: "img"});
    [0, 0.5, 1].forEach(function (f) {
      var y = T + (H - T - B) * (1 - f);
      root.appendChild(svg("line", {x1: L, x2: W - 4, y1: y, y2: y, "class": "axis"}));
      root.appendChild(svg("text", {x: L - 6, y: y + 4, "text-anchor": "end"}, fmt(max * f)));
    });
    return root;
  }
  function empty(root) {
    root.appendChild(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, "no calls in this range"));
    return root;
  }
  function xLabels(root, items, step, width) {
    var longest = Math.max.apply(null, [1].concat(items.map(function (it) { return String(it.label).length; })));
    var fits = Math.max(2, Math.floor((W - L) / (longest * 7 + 12)));  // labels that fit side by side
    var every = Math.max(1, Math.ceil(items.length / fits));
    items.forEach(function (it, i) {
      if (i % every) { return; }
      root.appendChild(svg("text", {x: L + i * step + width / 2, y: H - 6, "text-anchor": "middle"}, it.label));
    });
  }
  function barChart(items) {
    var max = niceMax(Math.max.apply(null, [0].concat(items.map(function (i) { return i.value; }))));
    var root = frame(max);
    if (!items.length || !items.some(function (i) { return i.value > 0; })) { return empty(root); }
    var step = (W - L - 4) / items.length, width = Math.max(1, step * 0.8), plot = H - T - B;
    items.forEach(function (it, i) {
      var h = plot * it.value / max;
      var r = svg("rect", {x: L + i * step, y: T + plot - h, width: width, height: h, fill: "#1a56c4", "class": "bar"});
      r.appendChild(svg("title", {}, it.title || it.label + ": " + it.value));
      root.appendChild(r);
    });
    xLabels(root, items, step, width);
    return root;
  }
  function stackedChart(items, colors) {
    var totals = items.map(function (i) { return i.parts.reduce(function (a, b) { return a + b; }, 0); });
    var max = niceMax(Math.max.apply(null, [0].concat(totals)));
    var root = frame(max);
    if (!items.length || !totals.some(function (t) { return t > 0; })) { return empty(root); }
    var step = (W - L - 4) / items.length, width = Math.max(1, step * 0.7), plot = H - T - B;
    var names = ["model", "transcription", "analysis"];
    items.forEach(function (it, i) {
      var y = T + plot;
      it.parts.forEach(function (v, j) {
        var h = plot * v / max;
        y -= h;
        var r = svg("rect", {x: L + i * step, y: y, width: width, height: h, fill: colors[j], "class": "bar"});
        r.appendChild(svg("title", {}, it.title + " " + names[j] + ": $" + v.toFixed(4)));
        root.appendChild(r);
      });
    });
    xLabels(root, items, step, width);
    return root;
  }
  function hbarChart(items) {
    var rowH = 24, labelW = 150;
    var h = Math.max(1, items.length) * rowH + 8;
    var root = svg("svg", {"class": "chart", viewBox: "0 0 " + W + " " + h, role: "img"});
    var max = Math.max.apply(null, [0].concat(items.map(function (i) { return i.value; })));
    if (!items.length || !(max > 0)) {
      root.appendChild(svg("text", {x: W / 2, y: h / 2 + 4, "text-anchor": "middle"}, "no calls in this range"));
      return root;
    }
    items.forEach(function (it, i) {
      var y = 4 + i * rowH;
      root.appendChild(svg("text", {x: labelW - 8, y: y + 15, "text-anchor": "end"}, it.label));
      var w = (W - labelW - 60) * it.value / max;
      var r = svg("rect", {x: labelW, y: y + 3, width: Math.max(1, w), height: rowH - 8, rx: 2,
                           fill: COLORS[i % COLORS.length], "class": "bar"});
      r.appendChild(svg("title", {}, it.label + ": " + it.value));
      root.appendChild(r);
      root.appendChild(svg("text", {x: labelW + w + 6, y: y + 15}, fmt(it.value)));
    });
    return root;
  }

  route();
})();
