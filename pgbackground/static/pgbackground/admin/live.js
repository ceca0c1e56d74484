/* pgbackground admin: the job list and the job page, live.
 *
 * Both pages follow their jobs over the websockets of pgbackground/live.js (PgbLive, loaded
 * first): the list over the feed (ws/pgbackground/jobs/), the job page over its job's socket
 * (ws/pgbackground/jobs/<id>/). While a socket is down, PgbLive polls the admin's JSON endpoints
 * instead (states/?ids= for the active jobs of the list, <id>/state/ for the page) until it is
 * back. The indicator ([data-pgb-indicator], in the tabs) says which: live, polling or offline.
 *
 * Messages update in place: badges, progress bars and messages, run times (ticking while a job
 * runs), queue waits, start/finish times, rows, buttons ([data-pgb-enable-when]). What only the
 * server renders — the job page's error block with its SQLSTATE name, notices, result preview,
 * timeline and buttons — is fetched again from <id>/sections/ when the job changes state, asks
 * to be canceled or reports new notices, and swapped into its #pgb-slot-<name>; the list fetches
 * the JSON of rows that changed state (command tag, worker) in one request.
 *
 * Hooks in the HTML:
 *   [data-pgb-live="list"]  data-pgb-socket, data-pgb-states-url, data-pgb-poll (ms)
 *   [data-pgb-live="job"]   data-pgb-socket, data-pgb-job-id, data-pgb-state, data-pgb-state-url,
 *                           data-pgb-sections-url, data-pgb-notices, data-pgb-cancel-requested,
 *                           data-pgb-poll (ms)
 *   [data-pgb-job="ID"]     an element of job ID's row / page; in the row or page:
 *   [data-pgb-field="state|progress|message|duration|queue_wait|started|finished|rows|
 *                    command_tag|worker|activity-*"]
 * API: window.pgbackground.applyJobState(msg) applies any message carrying {id, state, ...}
 * (so does a "pgbackground:job" CustomEvent on document); onJobState(fn) is called after each.
 * Forms with data-pgb-confirm="text" ask before submitting.
 */
(function () {
    "use strict";

    var ACTIVE = { queued: true, running: true };
    var ALL_SLOTS = ["actions", "summary", "timeline", "error", "activity", "notices", "result"];
    var ACTIVITY_EVERY = 5000;  // pg_stat_activity has no events: the page re-reads it while running
    var listeners = [];
    var clocks = {};            // id -> {state, duration, at}: run times tick between messages
    var connection = null;      // the PgbLive connection of this page

    // --- formatting (as the server's render.seconds / render.when) -------------------------

    function seconds(s) {
        if (s === null || s === undefined || isNaN(s)) { return ""; }
        s = Math.max(0, Number(s));
        if (s < 1) { return Math.round(s * 1000) + " ms"; }
        if (s < 60) { return s.toFixed(1) + " s"; }
        var whole = Math.floor(s);
        if (s < 3600) { return Math.floor(whole / 60) + " min " + pad(whole % 60) + " s"; }
        if (s < 86400) { return Math.floor(whole / 3600) + " h " + pad(Math.floor(whole % 3600 / 60)) + " min"; }
        return Math.floor(whole / 86400) + " d " + Math.floor(whole % 86400 / 3600) + " h";
    }

    function pad(n) { return (n < 10 ? "0" : "") + n; }

    function grouped(n) { return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }

    /* Minutes east of UTC of a server-rendered <time datetime="...+HH:MM"> (the server's zone). */
    function offsetOf(el) {
        var m = /([+-])(\d\d):?(\d\d)$/.exec((el && el.getAttribute("datetime")) || "");
        return m ? (m[1] === "-" ? -1 : 1) * (parseInt(m[2], 10) * 60 + parseInt(m[3], 10)) : 0;
    }

    /* A time in the server's zone: "14:03:12" today, "2 Nov 14:03" this year, else "2 Nov 2024". */
    function setTime(el, iso, offset) {
        if (!el || iso === undefined) { return; }
        if (!iso) { el.textContent = ""; el.removeAttribute("datetime"); return; }
        var ms = Date.parse(iso);
        if (isNaN(ms)) { return; }
        var d = new Date(ms + offset * 60000);
        var today = new Date(Date.now() + offset * 60000);
        var month = d.toLocaleString("en", { month: "short", timeZone: "UTC" });
        var hms = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
        var short = hms;
        if (d.toISOString().slice(0, 10) !== today.toISOString().slice(0, 10)) {
            short = d.getUTCFullYear() === today.getUTCFullYear()
                ? d.getUTCDate() + " " + month + " " + hms.slice(0, 5)
                : d.getUTCDate() + " " + month + " " + d.getUTCFullYear();
        }
        el.textContent = short;
        el.setAttribute("datetime", iso);
        el.title = d.toISOString().slice(0, 10) + " " + hms;
    }

    // --- applying a message --------------------------------------------------------------------

    function text(el, value) {
        if (el && value !== undefined && value !== null && el.textContent !== String(value)) {
            el.textContent = String(value);
        }
    }

    function each(scope, field, fn) {
        scope.querySelectorAll('[data-pgb-field="' + field + '"]').forEach(fn);
    }

    function stateOf(badge) {
        var m = badge && /pgb-state-(\w+)/.exec(badge.className);
        return m ? m[1] : null;
    }

    /* The elements that show job ``id``: the job page's root and the list's rows. */
    function scopesFor(id) {
        var scopes = [];
        var sid = String(id).replace(/[^0-9]/g, "");
        document.querySelectorAll('[data-pgb-live="job"][data-pgb-job-id="' + sid + '"]').forEach(function (page) {
            scopes.push(page);
        });
        document.querySelectorAll('#result_list [data-pgb-job="' + sid + '"]').forEach(function (el) {
            var row = el.closest("tr");
            if (row && scopes.indexOf(row) < 0) { scopes.push(row); }
        });
        return scopes;
    }

    function updateBadge(el, msg) {
        el.className = el.className.replace(/pgb-state-\w+/, "pgb-state-" + msg.state);
        text(el, msg.state_label || msg.state);
        var err = msg.error || (msg.error_sqlstate ? { sqlstate: msg.error_sqlstate } : null);
        if (err && err.sqlstate) {
            var condition = msg.error_condition ? " " + msg.error_condition : "";
            el.title = err.sqlstate + condition + (err.message ? " — " + err.message : "");
        }
    }

    function updateProgress(el, state, pct, message) {
        var fill = el.querySelector(".pgb-progress-fill");
        var label = el.querySelector(".pgb-progress-text");
        if (!fill) { return; }  // "—" of a failed job that never reported progress
        var shown = state === "stopped" ? 100 : pct;  // done is full, as the server draws it
        el.className = el.className.replace(/pgb-progress-(queued|running|stopped|canceled|error)/,
                                            "pgb-progress-" + state);
        el.classList.toggle("pgb-indeterminate", state === "running" && (pct === null || pct === undefined));
        if (shown !== null && shown !== undefined) {
            fill.style.width = Math.max(0, Math.min(100, shown)).toFixed(1) + "%";
            text(label, Math.round(shown) + "%");
            el.setAttribute("aria-valuenow", String(shown));
        } else {
            text(label, state === "running" ? "…" : "");
        }
        if (message !== undefined && message !== null) { el.title = message; }
    }

    function queueWait(msg) {
        if (msg.wait_seconds !== undefined) { return msg.wait_seconds; }
        if (!msg.started_at || !msg.created_at) { return undefined; }
        return (Date.parse(msg.started_at) - Date.parse(msg.created_at)) / 1000;
    }

    /* Apply one job's state (a websocket message or polled JSON) to every place showing it. */
    function applyJobState(msg) {
        if (!msg || msg.id === undefined || msg.id === null) { return; }
        var duration = msg.duration !== undefined ? msg.duration : msg.run_seconds;
        var clock = clocks[msg.id] || {};
        if (duration !== undefined) { clock = { duration: duration, at: Date.now() }; }
        clock.state = msg.state || clock.state;
        clocks[msg.id] = clock;

        if (msg.state) {
            document.querySelectorAll('[data-pgb-field="state"][data-pgb-job="' + msg.id + '"]')
                .forEach(function (el) { updateBadge(el, msg); });
        }

        scopesFor(msg.id).forEach(function (scope) {
            var offset = offsetOf(scope.querySelector("time[datetime]"));
            if (msg.state) {
                each(scope, "progress", function (el) { updateProgress(el, msg.state, msg.pct, msg.message); });
                scope.setAttribute("data-pgb-state", msg.state);
                scope.querySelectorAll("[data-pgb-enable-when]").forEach(function (el) {
                    el.disabled = el.getAttribute("data-pgb-enable-when").split(/\s+/).indexOf(msg.state) < 0;
                });
            }
            if (msg.message !== undefined) { each(scope, "message", function (el) { text(el, msg.message); }); }
            if (clock.duration !== undefined && clock.duration !== null) {
                each(scope, "duration", function (el) { text(el, seconds(currentDuration(clock))); });
            }
            var wait = queueWait(msg);
            if (wait !== undefined) { each(scope, "queue_wait", function (el) { text(el, seconds(wait)); }); }
            each(scope, "started", function (el) { setTime(el, msg.started_at, offset); });
            each(scope, "finished", function (el) { setTime(el, msg.finished_at, offset); });
            if (msg.row_count !== undefined) {
                each(scope, "rows", function (el) { text(el, msg.row_count === null ? "" : grouped(msg.row_count)); });
            }
            if (msg.command_tag !== undefined) {
                var tag = msg.command_tag || "";
                each(scope, "command_tag", function (el) { text(el, tag); });
                scope.querySelectorAll("td.field-command_tag").forEach(function (el) { text(el, tag || "-"); });
            }
            if (msg.worker !== undefined) { each(scope, "worker", function (el) { text(el, msg.worker); }); }
            if (msg.activity !== undefined) {
                var a = msg.activity || {};
                each(scope, "activity-state", function (el) { text(el, a.state || "—"); });
                each(scope, "activity-wait", function (el) {
                    text(el, a.wait_event ? a.wait_event_type + ": " + a.wait_event : "—");
                });
                each(scope, "activity-blocking", function (el) {
                    text(el, a.blocking_pids && a.blocking_pids.length ? a.blocking_pids.join(", ") : "—");
                });
            }
        });
        listeners.forEach(function (fn) { try { fn(msg); } catch (e) { /* a listener's own bug */ } });
    }

    /* A job just started: some worker is alive, whatever the page said when it was rendered. */
    function workerSeen() {
        var banner = document.getElementById("pgb-no-worker-banner");
        if (banner) { banner.hidden = true; }
    }

    function currentDuration(clock) {
        var extra = clock.state === "running" ? (Date.now() - clock.at) / 1000 : 0;
        return clock.duration + extra;
    }

    /* Run times of running jobs tick between messages (a job reports progress when it likes). */
    function tick() {
        Object.keys(clocks).forEach(function (id) {
            var clock = clocks[id];
            if (clock.state !== "running" || clock.duration === undefined || clock.duration === null) { return; }
            scopesFor(id).forEach(function (scope) {
                each(scope, "duration", function (el) { text(el, seconds(currentDuration(clock))); });
            });
        });
    }

    // --- the indicator -------------------------------------------------------------------------

    function indicate(mode) {
        document.querySelectorAll("[data-pgb-indicator]").forEach(function (el) {
            var shown = mode === "denied" ? "offline" : mode;
            el.hidden = mode === "closed";
            el.setAttribute("data-mode", shown);
            el.textContent = el.getAttribute("data-pgb-label-" + shown) || shown;
            el.title = el.getAttribute("data-pgb-title-" + shown) || "";
        });
    }

    // --- helpers -------------------------------------------------------------------------------

    function getJSON(url) {
        return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
            .then(function (r) { return r.ok ? r.json() : null; });
    }

    /* Collect calls for ``wait`` ms, then run ``fn`` once (never two at a time). */
    function batcher(fn, wait) {
        var pending = {}, timer = null, busy = false;
        function run() {
            timer = null;
            if (busy) { timer = window.setTimeout(run, wait); return; }
            var keys = Object.keys(pending);
            pending = {};
            if (!keys.length) { return; }
            busy = true;
            Promise.resolve(fn(keys)).catch(function () { /* the next change retries */ })
                .then(function () { busy = false; });
        }
        return function (keys) {
            keys.forEach(function (k) { pending[k] = true; });
            if (!timer) { timer = window.setTimeout(run, wait); }
        };
    }

    function wsPath(root) {
        return root.getAttribute("data-pgb-socket") || "";
    }

    // --- the job list --------------------------------------------------------------------------

    function startList(root) {
        var statesUrl = root.getAttribute("data-pgb-states-url");
        var rowState = function (id) {
            return stateOf(root.querySelector('#result_list [data-pgb-field="state"][data-pgb-job="' + id + '"]'));
        };
        var shownIds = function () {
            return Array.prototype.map.call(root.querySelectorAll('#result_list [data-pgb-field="state"][data-pgb-job]'),
                function (el) { return parseInt(el.getAttribute("data-pgb-job"), 10); });
        };
        // Rows that changed state: the JSON has what the websocket does not carry.
        var settle = batcher(function (ids) {
            return getJSON(statesUrl + "?ids=" + ids.join(",")).then(function (data) {
                ((data && data.jobs) || []).forEach(applyJobState);
            });
        }, 250);
        var newer = {};
        var notice = document.getElementById("pgb-new-jobs");
        var unfiltered = !window.location.search;

        connection = window.PgbLive.connect({
            ws: wsPath(root),
            poll: statesUrl,
            pollInterval: parseInt(root.getAttribute("data-pgb-poll") || "3000", 10),
            // The jobs that can still change: asked for on (re)connect, polled without a socket.
            ids: function () { return activeIdsOnList(); },
            onMode: indicate,
            onMessage: function (job, raw) {
                var before = rowState(job.id);
                if (before === null) {
                    // A job this page does not show; on the unfiltered list, a newer one is news.
                    var ids = shownIds();
                    if (unfiltered && notice && ids.length && job.id > Math.max.apply(null, ids)) {
                        newer[job.id] = true;
                        showNewJobs(notice, Object.keys(newer).length);
                    }
                    return;
                }
                // The message itself, not the merged state: a run time is only as fresh as the
                // message that carried it.
                applyJobState(raw);
                if (before !== job.state && !("command_tag" in raw)) { settle([String(job.id)]); }
                if (before === "queued" && job.state === "running") { workerSeen(); }
            },
        });
    }

    function showNewJobs(notice, n) {
        var label = document.getElementById("pgb-new-jobs-text");
        var one = label.getAttribute("data-pgb-text-one");
        var many = label.getAttribute("data-pgb-text-many");
        label.textContent = n === 1 ? one : many.replace("%(n)s", String(n));
        notice.hidden = false;
    }

    function activeIdsOnList() {
        var ids = [];
        document.querySelectorAll('#result_list [data-pgb-field="state"][data-pgb-job]').forEach(function (el) {
            if (ACTIVE[stateOf(el)]) { ids.push(parseInt(el.getAttribute("data-pgb-job"), 10)); }
        });
        return ids;
    }

    // --- the job page --------------------------------------------------------------------------

    /* Keep what a person typed in an input (e.g. the grace seconds) across a slot swap. */
    function keepTyped(oldSlot, newSlot) {
        oldSlot.querySelectorAll("input[id]").forEach(function (input) {
            if (input.type === "hidden" || input.value === input.defaultValue) { return; }
            var twin = newSlot.querySelector("#" + CSS.escape(input.id));
            if (twin) { twin.value = input.value; }
        });
    }

    function refreshSlots(root, names) {
        var url = root.getAttribute("data-pgb-sections-url");
        return fetch(url + "?slots=" + names.join(","), { credentials: "same-origin" })
            .then(function (r) { return r.ok ? r.text() : null; })
            .then(function (html) {
                if (html === null) { return; }
                var tpl = document.createElement("template");
                tpl.innerHTML = html;
                tpl.content.querySelectorAll("[data-pgb-slot]").forEach(function (fresh) {
                    var slot = document.getElementById("pgb-slot-" + fresh.getAttribute("data-pgb-slot"));
                    if (!slot) { return; }
                    keepTyped(slot, fresh);
                    slot.replaceChildren.apply(slot, Array.prototype.slice.call(fresh.childNodes));
                });
                var clock = clocks[root.getAttribute("data-pgb-job-id")];
                if (clock) { tick(); }
                root.dispatchEvent(new CustomEvent("pgbackground:refreshed", { bubbles: true, detail: { slots: names } }));
            });
    }

    function startJobPage(root) {
        var id = parseInt(root.getAttribute("data-pgb-job-id"), 10);
        var shown = {
            state: root.getAttribute("data-pgb-state"),
            notices: parseInt(root.getAttribute("data-pgb-notices") || "0", 10),
            cancel: root.getAttribute("data-pgb-cancel-requested") === "1",
        };
        if (!ACTIVE[shown.state]) { return; }  // a finished job does not change any more
        var finishing = false;
        var refresh = batcher(function (names) {
            return refreshSlots(root, ALL_SLOTS.concat(["sql"]).filter(function (n) { return names.indexOf(n) >= 0; }));
        }, 50);
        connection = window.PgbLive.connect({
            ws: wsPath(root),
            poll: root.getAttribute("data-pgb-state-url"),
            pollInterval: parseInt(root.getAttribute("data-pgb-poll") || "1000", 10),
            onMode: indicate,
            onMessage: function (job, raw) {
                if (job.id !== id) { return; }
                applyJobState(raw);
                var slots = [];
                if (job.state && job.state !== shown.state) {
                    if (shown.state === "queued" && job.state === "running") { workerSeen(); }
                    slots = ALL_SLOTS.slice();
                    if (job.state === "error") { slots.push("sql"); }  // where the error is in the SQL
                    shown.state = job.state;
                }
                if (job.cancel_requested !== undefined && job.cancel_requested !== shown.cancel) {
                    slots.push("actions", "summary", "timeline");
                    shown.cancel = job.cancel_requested;
                }
                if (typeof job.notices_count === "number" && job.notices_count !== shown.notices) {
                    slots.push("notices");
                    shown.notices = job.notices_count;
                }
                if (slots.length) { refresh(slots); }
                if (!ACTIVE[job.state] && !finishing) {
                    // Final: nothing will change any more. The refresh above shows the outcome.
                    finishing = true;
                    root.setAttribute("data-pgb-finished", "");
                    connection.close();
                }
            },
        });
        // What the job's backend waits for (pg_stat_activity) changes without events.
        window.setInterval(function () {
            if (!document.hidden && shown.state === "running" && !finishing) { refresh(["activity"]); }
        }, ACTIVITY_EVERY);
    }

    // --- start ---------------------------------------------------------------------------------

    function confirmForms() {
        // Delegated: the job page's buttons are re-rendered when the job changes state.
        document.addEventListener("submit", function (ev) {
            var form = ev.target;
            if (form && form.hasAttribute && form.hasAttribute("data-pgb-confirm")
                && !window.confirm(form.getAttribute("data-pgb-confirm"))) {
                ev.preventDefault();
            }
        });
    }

    function start() {
        confirmForms();
        document.addEventListener("pgbackground:job", function (ev) { applyJobState(ev.detail); });
        var mark = document.getElementById("pgb-error-position");
        if (mark && window.location.hash === "#pgb-error-position") { mark.scrollIntoView(); }
        if (!window.PgbLive) { return; }  // pgbackground/live.js missing: a static page
        var page = document.querySelector('[data-pgb-live="job"]');
        var list = document.querySelector('[data-pgb-live="list"]');
        if (page) { startJobPage(page); } else if (list) { startList(list); }
        window.setInterval(tick, 1000);
    }

    window.pgbackground = {
        applyJobState: applyJobState,
        onJobState: function (fn) { listeners.push(fn); },
        /* Stop following (the socket and any polling). */
        stopPolling: function () { if (connection) { connection.close(); } },
        connection: function () { return connection; },
        activeIdsOnList: activeIdsOnList,
        formatSeconds: seconds
    };

    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
})();
