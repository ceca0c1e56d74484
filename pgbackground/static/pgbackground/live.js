/* pgbackground live updates: a small dependency-free client for the job websockets.
 *
 * Follows ws/pgbackground/jobs/<id>/ (one job) or ws/pgbackground/jobs/ (the feed): the server
 * sends a snapshot first, then events; every message carries id, state, pct, message and seq.
 * Messages with a seq lower than the one held for the job are dropped. When the socket closes,
 * it reconnects with back-off (0.5 s doubling to 15 s) and, meanwhile, polls a JSON URL (the
 * same message shape: one object, a list, or {"jobs": [...]}) until the socket is back.
 *
 * Programmatic use:
 *   const live = PgbLive.connect({
 *     ws: "/ws/pgbackground/jobs/12/?cookie=...",  // path or ws(s):// URL
 *     poll: "/status.json",          // optional polling fallback
 *     pollInterval: 2000,            // ms
 *     ids: () => [12, 13],           // feed only: jobs shown, re-read on (re)connect and polled
 *     onMessage(job, raw) {},        // job: the merged state of the job (all keys seen so far)
 *     onMode(mode) {},               // "connecting" | "live" | "polling" | "offline" | "denied"
 *                                    // | "closed"; "offline": the socket is down and the last
 *                                    // poll failed too (network, server error)
 *   });
 *   live.close();
 *
 * Declarative use (no script of your own): an element with both data-pgb-live and data-pgb-ws
 * (data-pgb-poll, data-pgb-poll-interval optional; data-pgb-feed for the feed) is bound on
 * DOMContentLoaded (elements without data-pgb-ws are left alone); inside it:
 *   [data-pgb-job="<id>"]        a job's element (for one job, the container itself may carry it)
 *     [data-pgb-field="state"]     text = state; data-state attribute = state (badge styling)
 *     [data-pgb-field="pct"]       <progress>: value; other elements: style.width = pct%
 *     [data-pgb-field="pct-text"]  "42%" (empty when no progress was reported)
 *     [data-pgb-field="message"]   the progress message
 *     [data-pgb-field="duration"]  run time, ticking while running ("1 min 05 s")
 *     [data-pgb-field="started_at"|"finished_at"|"created_at"]  local date/time
 *     [data-pgb-field="row_count"|"notices_count"|"label"|"state_label"]  text
 *     [data-pgb-field="error"]     "SQLSTATE: message", hidden when there is no error
 *     [data-pgb-show-when="running queued"]    hidden unless the state is listed
 *     [data-pgb-enable-when="running queued"]  disabled unless the state is listed
 *   [data-pgb-indicator]         text "live" / "polling" / ..., data-mode attribute = mode
 * The job element also gets data-state. Events bubble from the container:
 *   "pgb:message" (detail: {job, raw}), "pgb:finished" (detail: {job}) once per job when it
 *   reaches stopped/canceled/error, "pgb:unknown-job" (detail: {job}) for a feed message about a
 *   job the page does not show, "pgb:mode" (detail: {mode}).
 */
(function (global) {
  "use strict";

  var TERMINAL = { stopped: true, canceled: true, error: true };
  var CLOSE_LOGIN_REQUIRED = 4401;
  var CLOSE_FORBIDDEN = 4403;

  function wsUrl(path) {
    if (/^wss?:\/\//.test(path)) return path;
    var proto = global.location.protocol === "https:" ? "wss:" : "ws:";
    return proto + "//" + global.location.host + path;
  }

  function asList(data) {
    if (Array.isArray(data)) return data;
    if (data && Array.isArray(data.jobs)) return data.jobs;
    return data && typeof data === "object" && "id" in data ? [data] : [];
  }

  function connect(options) {
    var jobs = {};          // id -> merged state
    var ws = null;
    var closed = false;
    var mode = null;
    var delay = 500;
    var reconnectTimer = null;
    var pollTimer = null;
    var pollInterval = options.pollInterval || 2000;

    function setMode(m) {
      if (m === mode) return;
      mode = m;
      if (options.onMode) options.onMode(m);
    }

    function handle(raw) {
      if (!raw || typeof raw !== "object" || raw.type === "error" || raw.id == null) return;
      var held = jobs[raw.id];
      if (held && typeof raw.seq === "number" && raw.seq < held.seq) return; // stale
      var job = Object.assign({}, held || {}, raw);
      job.receivedAt = Date.now();
      jobs[raw.id] = job;
      if (options.onMessage) options.onMessage(job, raw);
    }

    function ids() {
      return options.ids ? options.ids() : [];
    }

    function openSocket() {
      if (closed) return;
      if (mode !== "polling" && mode !== "offline") setMode("connecting");
      var opened = false;
      try {
        ws = new WebSocket(wsUrl(options.ws));
      } catch (e) {
        scheduleReconnect();
        return;
      }
      ws.onopen = function () {
        opened = true;
        delay = 500;
        stopPolling();
        setMode("live");
        var shown = ids();
        if (shown.length) ws.send(JSON.stringify({ type: "snapshot", ids: shown }));
      };
      ws.onmessage = function (ev) {
        var data;
        try { data = JSON.parse(ev.data); } catch (e) { return; }
        handle(data);
      };
      ws.onclose = function (ev) {
        ws = null;
        if (closed) return;
        if (ev.code === CLOSE_FORBIDDEN || ev.code === CLOSE_LOGIN_REQUIRED) {
          // Polling would be refused too.
          closed = true;
          stopPolling();
          setMode("denied");
          return;
        }
        if (!opened || ev.code !== 1000) startPolling();
        if (!options.poll) setMode("offline");
        scheduleReconnect();
      };
    }

    function scheduleReconnect() {
      if (closed || reconnectTimer) return;
      var wait = delay * (0.75 + Math.random() * 0.5);
      delay = Math.min(delay * 2, 15000);
      reconnectTimer = setTimeout(function () {
        reconnectTimer = null;
        openSocket();
      }, wait);
    }

    function poll() {
      if (closed || !options.poll) return;
      var next = function () {
        if (pollTimer !== null && !closed) pollTimer = setTimeout(poll, pollInterval);
      };
      var url = options.poll;
      var shown = ids();
      // A feed with nothing to follow on the page has nothing to ask for.
      if (options.ids && !shown.length) { next(); return; }
      if (shown.length) url += (url.indexOf("?") < 0 ? "?" : "&") + "ids=" + shown.join(",");
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) {
          if (r.status === 401 || r.status === 403) {
            closed = true;
            setMode("denied");
            return null;
          }
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.json();
        })
        .then(function (data) {
          if (!data || closed) return;
          if (pollTimer !== null) setMode("polling");
          asList(data).forEach(handle);
        })
        .catch(function () {
          // Neither the socket nor the JSON answers: say so, and try again at the next tick.
          if (pollTimer !== null && !closed) setMode("offline");
        })
        .then(next);
    }

    function startPolling() {
      if (!options.poll || pollTimer !== null || closed) return;
      if (mode !== "offline") setMode("polling");
      pollTimer = 0;
      poll();
    }

    function stopPolling() {
      if (pollTimer) clearTimeout(pollTimer);
      pollTimer = null;
    }

    openSocket();

    return {
      get mode() { return mode; },
      jobs: jobs,
      close: function () {
        closed = true;
        stopPolling();
        if (reconnectTimer) clearTimeout(reconnectTimer);
        if (ws) ws.close(1000);
        setMode("closed");
      },
      /** Ask for fresh snapshots (of the given ids, on a feed). */
      refresh: function (someIds) {
        if (ws && ws.readyState === 1) {
          ws.send(JSON.stringify(someIds ? { type: "snapshot", ids: someIds } : { type: "snapshot" }));
        } else if (pollTimer !== null) {
          poll();
        }
      },
    };
  }

  // --- declarative binding -------------------------------------------------------------------

  function fmtDuration(seconds) {
    if (seconds == null || isNaN(seconds)) return "";
    seconds = Math.max(0, seconds);
    if (seconds < 10) return seconds.toFixed(1) + " s";
    var s = Math.round(seconds);
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }

  function fmtTime(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  function durationOf(job) {
    if (job.duration == null) return null;
    var extra = job.state === "running" && job.durationAt
      ? (Date.now() - job.durationAt) / 1000 : 0;
    return job.duration + extra;
  }

  function render(el, job) {
    el.setAttribute("data-state", job.state);
    var fields = el.querySelectorAll("[data-pgb-field]");
    if (el.hasAttribute("data-pgb-field")) fields = [el].concat(Array.prototype.slice.call(fields));
    Array.prototype.forEach.call(fields, function (f) {
      var name = f.getAttribute("data-pgb-field");
      switch (name) {
        case "state":
          f.textContent = job.state;
          f.setAttribute("data-state", job.state);
          break;
        case "pct":
          var pct = job.pct == null ? (job.state === "stopped" ? 100 : null) : job.pct;
          if (f.tagName === "PROGRESS") {
            if (pct == null) f.removeAttribute("value"); else f.value = pct;
          } else {
            f.style.width = (pct || 0) + "%";
          }
          if (pct != null) f.setAttribute("aria-valuenow", String(pct));
          break;
        case "pct-text":
          f.textContent = job.pct == null ? "" : Math.round(job.pct) + "%";
          break;
        case "duration":
          f.textContent = fmtDuration(durationOf(job));
          break;
        case "created_at":
        case "started_at":
        case "finished_at":
          if (name in job) f.textContent = fmtTime(job[name]);
          break;
        case "error":
          var err = job.error;
          f.hidden = !err;
          f.textContent = err ? err.sqlstate + ": " + err.message : "";
          break;
        default:
          if (name in job) f.textContent = job[name] == null ? "" : String(job[name]);
      }
    });
    el.querySelectorAll("[data-pgb-show-when]").forEach(function (f) {
      f.hidden = f.getAttribute("data-pgb-show-when").split(/\s+/).indexOf(job.state) < 0;
    });
    el.querySelectorAll("[data-pgb-enable-when]").forEach(function (f) {
      f.disabled = f.getAttribute("data-pgb-enable-when").split(/\s+/).indexOf(job.state) < 0;
    });
  }

  function bind(container) {
    if (container.__pgbLive) return container.__pgbLive;
    var finished = {};
    function emit(name, detail) {
      container.dispatchEvent(new CustomEvent(name, { bubbles: true, detail: detail }));
    }
    function jobElements(id) {
      var sel = '[data-pgb-job="' + String(id).replace(/[^0-9]/g, "") + '"]';
      var found = Array.prototype.slice.call(container.querySelectorAll(sel));
      if (container.matches(sel)) found.unshift(container);
      return found;
    }
    function indicate(mode) {
      document.querySelectorAll("[data-pgb-indicator]").forEach(function (el) {
        el.setAttribute("data-mode", mode);
        el.textContent = el.getAttribute("data-pgb-label-" + mode) || mode;
      });
      emit("pgb:mode", { mode: mode });
    }
    var live = connect({
      ws: container.getAttribute("data-pgb-ws"),
      poll: container.getAttribute("data-pgb-poll"),
      pollInterval: parseInt(container.getAttribute("data-pgb-poll-interval") || "2000", 10),
      ids: container.hasAttribute("data-pgb-feed") ? function () {
        return Array.prototype.map.call(container.querySelectorAll("[data-pgb-job]"), function (e) {
          return parseInt(e.getAttribute("data-pgb-job"), 10);
        }).filter(function (n) { return n > 0; });
      } : null,
      onMode: indicate,
      onMessage: function (job, raw) {
        if ("duration" in raw) job.durationAt = Date.now();
        var els = jobElements(job.id);
        els.forEach(function (el) { render(el, job); });
        if (!els.length) emit("pgb:unknown-job", { job: job });
        emit("pgb:message", { job: job, raw: raw });
        if (TERMINAL[job.state] && !finished[job.id]) {
          finished[job.id] = true;
          emit("pgb:finished", { job: job });
        }
      },
    });
    // Durations of running jobs tick between messages.
    setInterval(function () {
      Object.keys(live.jobs).forEach(function (id) {
        var job = live.jobs[id];
        if (job.state !== "running") return;
        jobElements(id).forEach(function (el) {
          el.querySelectorAll('[data-pgb-field="duration"]').forEach(function (f) {
            f.textContent = fmtDuration(durationOf(job));
          });
        });
      });
    }, 1000);
    container.__pgbLive = live;
    return live;
  }

  function bindAll(root) {
    (root || document).querySelectorAll("[data-pgb-live][data-pgb-ws]").forEach(bind);
  }

  global.PgbLive = { connect: connect, bind: bind, bindAll: bindAll, render: render,
                     formatDuration: fmtDuration };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { bindAll(); });
  } else {
    bindAll();
  }
})(window);
