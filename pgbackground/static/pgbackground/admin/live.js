/* pgbackground admin: live job state on the list and the job page.
 *
 * Today it polls the admin's JSON endpoints while something is active. It is built so that a
 * websocket client can take over: feed any message carrying {id, state, pct, message, ...}
 * to window.pgbackground.applyJobState(msg) (or dispatch a "pgbackground:job" CustomEvent on
 * document with the message as detail) and call window.pgbackground.stopPolling().
 *
 * Hooks in the HTML:
 *   [data-pgb-live="list"]  data-pgb-states-url, data-pgb-poll (ms)  — the job list
 *   [data-pgb-live="job"]   data-pgb-job-id, data-pgb-state-url, data-pgb-state, data-pgb-poll
 *   [data-pgb-job="ID"]     an element of job ID's row / page; inside its row or page:
 *   [data-pgb-field="state|progress|message|duration|queue_wait|started|finished|rows|
 *                    notices_count|command_tag|activity-*"]
 * Forms with data-pgb-confirm="text" ask before submitting.
 */
(function () {
    "use strict";

    var ACTIVE = { queued: true, running: true };
    var timers = [];
    var listeners = [];

    function text(el, value) {
        if (el && value !== undefined && value !== null && el.textContent !== String(value)) {
            el.textContent = String(value);
        }
    }

    function scopeFor(id) {
        var scopes = [];
        var page = document.querySelector('[data-pgb-live="job"][data-pgb-job-id="' + id + '"]');
        if (page) { scopes.push(page); }
        document.querySelectorAll('#result_list [data-pgb-job="' + id + '"]').forEach(function (el) {
            var row = el.closest("tr");
            if (row) { scopes.push(row); }
        });
        return scopes;
    }

    function updateBadge(el, state, label) {
        if (!el) { return; }
        el.className = el.className.replace(/pgb-state-\w+/, "pgb-state-" + state);
        text(el, label || state);
    }

    function updateProgress(el, state, pct, message) {
        if (!el) { return; }
        var fill = el.querySelector(".pgb-progress-fill");
        var label = el.querySelector(".pgb-progress-text");
        var shown = pct;
        if ((shown === null || shown === undefined) && state === "stopped") { shown = 100; }
        el.className = el.className.replace(/pgb-progress-(queued|running|stopped|canceled|error)/,
                                            "pgb-progress-" + state);
        el.classList.toggle("pgb-indeterminate", state === "running" && (pct === null || pct === undefined));
        if (shown !== null && shown !== undefined) {
            if (fill) { fill.style.width = Math.max(0, Math.min(100, shown)).toFixed(1) + "%"; }
            text(label, Math.round(shown) + "%");
            el.setAttribute("aria-valuenow", String(shown));
        } else {
            text(label, state === "running" ? "…" : "");
        }
        if (message !== undefined && message !== null) { el.title = message; }
    }

    /* Apply one job's state (a JSON message from polling or a websocket) to the page. */
    function applyJobState(msg) {
        if (!msg || msg.id === undefined) { return; }
        scopeFor(msg.id).forEach(function (scope) {
            var q = function (f) { return scope.querySelector('[data-pgb-field="' + f + '"]'); };
            var before = scope.getAttribute("data-pgb-state");
            if (msg.state) {
                updateBadge(q("state"), msg.state, msg.state_label);
                updateProgress(q("progress"), msg.state, msg.pct, msg.message);
                scope.setAttribute("data-pgb-state", msg.state);
            }
            if (msg.message !== undefined) { text(q("message"), msg.message); }
            text(q("duration"), msg.run_time);
            text(q("queue_wait"), msg.queue_wait);
            text(q("rows"), msg.row_count === null || msg.row_count === undefined ? undefined
                 : Number(msg.row_count).toLocaleString());
            text(q("command_tag"), msg.command_tag);
            text(q("notices_count"), msg.notices_count);
            if (msg.activity !== undefined) {
                var a = msg.activity || {};
                text(q("activity-state"), a.state || "—");
                text(q("activity-wait"), a.wait_event ? a.wait_event_type + ": " + a.wait_event : "—");
                text(q("activity-blocking"), a.blocking_pids && a.blocking_pids.length
                     ? a.blocking_pids.join(", ") : "—");
            }
            // The job page reloads once the job ends, to show its result, error and notices.
            if (scope.matches('[data-pgb-live="job"]') && before && ACTIVE[before] && msg.terminal) {
                window.setTimeout(function () { window.location.reload(); }, 300);
            }
        });
        listeners.forEach(function (fn) { try { fn(msg); } catch (e) { /* a listener's own bug */ } });
    }

    function getJSON(url, done) {
        var xhr = new XMLHttpRequest();
        xhr.open("GET", url);
        xhr.setRequestHeader("Accept", "application/json");
        xhr.onload = function () {
            if (xhr.status === 200) {
                try { done(JSON.parse(xhr.responseText)); } catch (e) { /* not JSON: ignore */ }
            }
        };
        xhr.send();
    }

    function poll(fn, every) {
        var busy = false;
        var id = window.setInterval(function () {
            if (busy || document.hidden) { return; }
            busy = true;
            fn(function () { busy = false; });
        }, every);
        timers.push(id);
    }

    function startJobPage(root) {
        var url = root.getAttribute("data-pgb-state-url");
        var every = parseInt(root.getAttribute("data-pgb-poll") || "2000", 10);
        if (!url || !ACTIVE[root.getAttribute("data-pgb-state")]) { return; }
        poll(function (release) {
            getJSON(url, function (data) { applyJobState(data); });
            release();
        }, every);
    }

    function activeIdsOnList() {
        var ids = [];
        document.querySelectorAll("#result_list [data-pgb-field=state][data-pgb-job]").forEach(function (el) {
            if (/pgb-state-(queued|running)/.test(el.className)) { ids.push(el.getAttribute("data-pgb-job")); }
        });
        return ids;
    }

    function startList(root) {
        var url = root.getAttribute("data-pgb-states-url");
        var every = parseInt(root.getAttribute("data-pgb-poll") || "3000", 10);
        if (!url) { return; }
        poll(function (release) {
            var ids = activeIdsOnList();
            if (!ids.length) { release(); return; }
            getJSON(url + "?ids=" + ids.join(","), function (data) {
                (data.jobs || []).forEach(applyJobState);
            });
            release();
        }, every);
    }

    function confirmForms() {
        document.querySelectorAll("form[data-pgb-confirm]").forEach(function (form) {
            form.addEventListener("submit", function (ev) {
                if (!window.confirm(form.getAttribute("data-pgb-confirm"))) { ev.preventDefault(); }
            });
        });
    }

    function start() {
        document.querySelectorAll('[data-pgb-live="job"]').forEach(startJobPage);
        document.querySelectorAll('[data-pgb-live="list"]').forEach(startList);
        confirmForms();
        document.addEventListener("pgbackground:job", function (ev) { applyJobState(ev.detail); });
        var mark = document.getElementById("pgb-error-position");
        if (mark && window.location.hash === "#pgb-error-position") { mark.scrollIntoView(); }
    }

    window.pgbackground = {
        applyJobState: applyJobState,
        stopPolling: function () { timers.forEach(window.clearInterval); timers = []; },
        onJobState: function (fn) { listeners.push(fn); },
        activeIdsOnList: activeIdsOnList
    };

    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
})();
