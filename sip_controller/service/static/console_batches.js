/* Outbound batches in the operator console (#16): #/batches lists the newest batches with a progress bar, their
   rows by outcome and pause/resume/cancel buttons (the batch API, with the session's CSRF token), refreshed every
   two seconds while shown. Everything from a batch is set with textContent, never parsed as markup. */
"use strict";
(function () {
  var box = document.getElementById("batches");
  var live = document.getElementById("console");
  if (!box || !live) { return; }
  var csrf = live.getAttribute("data-csrf") || "";
  var csrfHeader = box.getAttribute("data-csrf-header") || "x-sipctl-csrf";
  var REFRESH_MS = 2000;
  var LIMIT = 50;
  var ORDER = ["completed", "voicemail", "no_answer", "busy", "failed", "canceled", "do_not_call"];
  var ACTIONS = {running: ["pause", "cancel"], paused: ["resume", "cancel"]};
  var LABELS = {pause: "Pause", resume: "Resume", cancel: "Cancel"};
  var timer = null;
  var generation = 0;  // a newer load wins over an older one's late answer

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } return node; }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function time(epoch) {
    var d = new Date(Number(epoch) * 1000);
    if (isNaN(d.getTime())) { return "\u2013"; }
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":" +
      pad(d.getMinutes());
  }
  function shown() { return /^#\/batches(?:[/?]|$)/.test(window.location.hash); }
  function list() { return document.getElementById("batch-list"); }
  function setState(state, message) {
    var section = list();
    if (!section) { return; }
    section.setAttribute("data-state", state);
    var note = section.querySelector(".load-note");
    note.textContent = message || "";
    note.className = "load-note " + (state === "error" ? "error" : "muted");
  }
  function answer(r) {
    return r.json().catch(function () { return {}; }).then(function (body) {
      if (!r.ok) { throw new Error(body.error || ("HTTP " + r.status)); }
      return body;
    });
  }

  function build() {
    var section = el("section", {id: "batch-list", "data-state": "loading"});
    section.appendChild(el("h2", {}, "Outbound batches"));
    section.appendChild(el("p", {"class": "load-note muted"}, "loading\u2026"));
    var scroll = el("div", {"class": "scroll"});
    var table = el("table", {id: "batches-table"});
    var head = el("tr");
    ["Batch", "Made", "Status", "Profile", "Progress", "Outcomes", ""].forEach(function (h) {
      head.appendChild(el("th", {}, h));
    });
    table.appendChild(el("thead")).appendChild(head);
    table.appendChild(el("tbody", {id: "batches-body"}));
    scroll.appendChild(table);
    section.appendChild(scroll);
    box.appendChild(section);
  }

  function outcomes(b) {
    var cell = el("td", {"class": "outcomes"});
    var counts = b.outcomes || {};
    var names = ORDER.filter(function (k) { return counts[k]; }).concat(
      Object.keys(counts).filter(function (k) { return ORDER.indexOf(k) < 0 && counts[k]; }).sort());
    var states = b.states || {};
    var busy = (states.placing || 0) + (states.in_flight || 0);
    names.forEach(function (name) {
      var item = el("span", {"class": "outcome", "data-outcome": name}, name.replace(/_/g, " "));
      item.appendChild(el("b", {}, counts[name]));
      cell.appendChild(item);
    });
    [["calling", busy], ["waiting", states.queued || 0]].forEach(function (pair) {
      if (!pair[1]) { return; }
      var item = el("span", {"class": "outcome muted", "data-outcome": pair[0]}, pair[0]);
      item.appendChild(el("b", {}, pair[1]));
      cell.appendChild(item);
    });
    if (!cell.firstChild) { cell.textContent = "\u2013"; }
    return cell;
  }

  function row(b) {
    var tr = el("tr", {"data-batch-id": b.id, "data-status": b.status});
    tr.appendChild(el("td", {"class": "id"}, b.id));
    tr.appendChild(el("td", {}, time(b.created_at)));
    var status = el("td");
    status.appendChild(el("span", {"class": "badge " + b.status}, b.status));
    tr.appendChild(status);
    tr.appendChild(el("td", {}, b.profile));
    var total = Number(b.rows) || 0, finished = Number(b.finished) || 0;
    var progress = el("td", {"class": "progress"});
    progress.appendChild(el("progress", {max: Math.max(total, 1), value: finished,
                                         "aria-label": "rows finished of " + total}));
    progress.appendChild(el("span", {"class": "progress-text"},
      finished + " / " + total + " (" + Math.round(100 * (Number(b.progress) || 0)) + " %)"));
    tr.appendChild(progress);
    tr.appendChild(outcomes(b));
    var actions = el("td", {"class": "actions"});
    (ACTIONS[b.status] || []).forEach(function (action) {
      var button = el("button", {type: "button", "class": action, "data-action": action}, LABELS[action]);
      button.addEventListener("click", function () { act(b.id, action, button); });
      actions.appendChild(button);
    });
    tr.appendChild(actions);
    return tr;
  }

  function render(batches) {
    var body = document.getElementById("batches-body");
    if (!body) { return; }
    clear(body);
    if (!batches.length) {
      var empty = el("tr");
      empty.appendChild(el("td", {colspan: 7, "class": "muted"}, "No batches yet: POST /v1/outbound/batches makes one."));
      body.appendChild(empty);
    }
    batches.forEach(function (b) { body.appendChild(row(b)); });
  }

  function load(gen) {
    fetch("/v1/outbound/batches?limit=" + LIMIT, {credentials: "same-origin", headers: {accept: "application/json"}})
      .then(answer)
      .then(function (body) {
        if (gen !== generation) { return; }
        render(body.batches || []);
        setState("ready", "updated " + new Date().toLocaleTimeString() + "; refreshed every two seconds");
      })
      .catch(function (e) { if (gen === generation) { setState("error", e.message); } })
      .then(function () {
        if (gen === generation && shown()) { timer = setTimeout(function () { load(gen); }, REFRESH_MS); }
      });
  }

  function reload() {
    generation += 1;
    if (timer !== null) { clearTimeout(timer); timer = null; }
    load(generation);
  }

  function act(id, action, button) {
    button.disabled = true;
    var headers = {accept: "application/json"};
    headers[csrfHeader] = csrf;
    fetch("/v1/outbound/batches/" + encodeURIComponent(id) + "/" + action,
          {method: "POST", credentials: "same-origin", headers: headers})
      .then(answer)
      .then(reload, function (e) { setState("error", LABELS[action] + " failed: " + e.message); button.disabled = false; });
  }

  function route() {
    generation += 1;
    if (timer !== null) { clearTimeout(timer); timer = null; }
    box.hidden = !shown();
    if (!shown()) { clear(box); return; }
    if (!list()) { build(); }
    load(generation);
  }

  window.addEventListener("hashchange", route);
  route();
})();
