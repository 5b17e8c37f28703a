// Live operations dashboard: plain JS + SVG, no libraries or CDNs (the site may be offline).
// The admin token is asked for once and kept in sessionStorage (this tab only); every call to
// the monitoring API sends it as a bearer token. Data is written with textContent only.
(function () {
  "use strict";

  var TOKEN_KEY = "festival.adminToken";
  var REFRESH_MS = 5000;
  var LEDGER_REFRESH_MS = 60000;
  var SVG_NS = "http://www.w3.org/2000/svg";
  var refreshTimer = null;
  var lastLedgerCheck = 0;

  function $(id) { return document.getElementById(id); }

  function token() { return window.sessionStorage.getItem(TOKEN_KEY); }

  function euros(cents) {
    if (cents === null || cents === undefined) { return "–"; }
    var negative = cents < 0;
    var absolute = Math.abs(cents);
    var whole = Math.floor(absolute / 100);
    var fraction = String(absolute % 100).padStart(2, "0");
    return (negative ? "−" : "") + "€" + whole.toLocaleString("en-GB") + "." + fraction;
  }

  function plural(count, noun) { return count + " " + noun + (count === 1 ? "" : "s"); }

  function time(iso) {
    if (!iso) { return "never"; }
    var date = new Date(iso);
    if (isNaN(date.getTime())) { return String(iso); }
    return date.toLocaleTimeString("en-GB", { hour12: false });
  }

  function setStatus(text, isError) {
    var status = $("status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function showLogin(message) {
    $("dashboard").classList.add("hidden");
    $("login").classList.remove("hidden");
    var error = $("login-error");
    error.textContent = message || "";
    error.classList.toggle("hidden", !message);
    $("token").focus();
  }

  function showDashboard() {
    $("login").classList.add("hidden");
    $("dashboard").classList.remove("hidden");
  }

  function api(path) {
    return window.fetch(path, {
      headers: { "Authorization": "Bearer " + token(), "Accept": "application/json" },
      cache: "no-store"
    }).then(function (response) {
      if (response.status === 401) {
        var refused = new Error("token refused");
        refused.unauthorized = true;
        throw refused;
      }
      if (!response.ok) { throw new Error(path + " answered " + response.status); }
      return response.json();
    });
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (className) { td.className = className; }
    row.appendChild(td);
    return td;
  }

  function badge(row, text, kind) {
    var td = document.createElement("td");
    var span = document.createElement("span");
    span.className = "badge " + kind;
    span.textContent = text;
    td.appendChild(span);
    row.appendChild(td);
  }

  function fillTable(id, rows, render, emptyText, columns) {
    var body = $(id).querySelector("tbody");
    body.textContent = "";
    if (!rows || rows.length === 0) {
      var row = document.createElement("tr");
      var td = cell(row, emptyText, "empty");
      td.colSpan = columns;
      body.appendChild(row);
      return;
    }
    rows.forEach(function (item) {
      var tr = document.createElement("tr");
      render(tr, item);
      body.appendChild(tr);
    });
  }

  function svg(name, attributes, parent) {
    var element = document.createElementNS(SVG_NS, name);
    Object.keys(attributes).forEach(function (key) { element.setAttribute(key, attributes[key]); });
    if (parent) { parent.appendChild(element); }
    return element;
  }

  function drawChart(points) {
    var chart = $("chart-svg");
    while (chart.firstChild) { chart.removeChild(chart.firstChild); }
    var width = 1000, height = 220, left = 48, bottom = 20, top = 10;
    var plotWidth = width - left - 4, plotHeight = height - bottom - top;
    var maximum = 0;
    points.forEach(function (point) { maximum = Math.max(maximum, point.amount_cents); });
    var scaleMax = maximum > 0 ? maximum : 100;
    svg("line", { x1: left, y1: top + plotHeight, x2: width, y2: top + plotHeight, "class": "axis" }, chart);
    [0, 0.5, 1].forEach(function (fraction) {
      var y = top + plotHeight - fraction * plotHeight;
      svg("line", { x1: left, y1: y, x2: width, y2: y, "class": "axis", "stroke-dasharray": "2,4" }, chart);
      var label = svg("text", { x: left - 6, y: y + 3, "text-anchor": "end" }, chart);
      label.textContent = euros(Math.round(scaleMax * fraction)).replace(/\.00$/, "");
    });
    var slot = plotWidth / Math.max(points.length, 1);
    points.forEach(function (point, index) {
      var barHeight = (point.amount_cents / scaleMax) * plotHeight;
      var x = left + index * slot + slot * 0.1;
      var bar = svg("rect", {
        x: x.toFixed(2), y: (top + plotHeight - barHeight).toFixed(2),
        width: (slot * 0.8).toFixed(2), height: barHeight.toFixed(2), "class": "bar"
      }, chart);
      var title = svg("title", {}, bar);
      title.textContent = time(point.minute) + ": " + euros(point.amount_cents) + " in " +
        point.orders + " orders";
      var isLast = index === points.length - 1;
      if (index % 10 === 0 || isLast) {
        // The last label is right-aligned so it is not cut off at the edge.
        var label = svg("text", {
          x: (isLast ? width - 2 : x + slot * 0.4).toFixed(2), y: height - 5,
          "text-anchor": isLast ? "end" : "middle"
        }, chart);
        label.textContent = time(point.minute).slice(0, 5);
      }
    });
    chart.setAttribute("data-points", String(points.length));
  }

  function render(data) {
    Array.prototype.forEach.call(document.querySelectorAll(".window"), function (element) {
      element.textContent = String(data.window_minutes);
    });
    $("sales-amount").textContent = euros(data.sales.amount_cents);
    $("sales-orders").textContent = plural(data.sales.orders, "order");
    var points = data.sales_per_minute || [];
    var last = points.length ? points[points.length - 1] : { amount_cents: 0, orders: 0 };
    $("sales-rate").textContent = euros(last.amount_cents);
    $("sales-rate-sub").textContent = plural(last.orders, "order") + " in the current minute";
    $("topups-amount").textContent = euros(data.topups.amount_cents);
    var methods = data.topups.by_method || {};
    $("topups-split").textContent = ["cash", "card", "stripe"].map(function (method) {
      return method + " " + euros(methods[method] || 0);
    }).join(" · ");
    var online = data.kiosks.filter(function (kiosk) { return kiosk.state === "online"; }).length;
    $("kiosks-online").textContent = online + " online";
    $("kiosks-offline").textContent = (data.kiosks.length - online) + " offline or unknown, " +
      data.kiosks.filter(function (kiosk) { return !kiosk.enabled; }).length + " disabled";
    var total = 0, failed = 0;
    (data.error_rates || []).forEach(function (row) {
      total += row.count;
      // Replays are answered from the stored outcome: not an error.
      if (row.status !== "approved" && row.status !== "replayed") { failed += row.count; }
    });
    $("error-rate").textContent = total ? (100 * failed / total).toFixed(1) + " %" : "–";
    $("error-total").textContent = failed + " of " + total + " declined or rejected";

    drawChart(points);
    fillTable("kiosks", data.kiosks, function (row, kiosk) {
      cell(row, kiosk.kiosk_id);
      cell(row, kiosk.role);
      if (!kiosk.enabled) { badge(row, "disabled", "disabled"); }
      else { badge(row, kiosk.state, kiosk.state === "online" ? "online" : (kiosk.state === "offline" ? "offline" : "unknown")); }
      cell(row, time(kiosk.last_seen_at));
      cell(row, (kiosk.missing_seq_ranges || []).map(function (range) {
        return range[0] === range[1] ? String(range[0]) : range[0] + "–" + range[1];
      }).join(", ") || "none");
    }, "no kiosk registered", 5);
    // DESIGN.md 1.1: a bar paying out far more cup returns than it takes in deposits.
    var alerts = data.return_alerts || [];
    $("return-alerts-panel").setAttribute("data-alerts", String(alerts.length));
    $("return-alerts-panel").classList.toggle("alert", alerts.length > 0);
    fillTable("return-alerts", alerts, function (row, alert) {
      badge(row, alert.kiosk_id, "bad");
      cell(row, euros(alert.deposits_cents), "num");
      cell(row, euros(alert.returns_cents), "num");
      cell(row, euros(alert.excess_cents) + " (alert above " + euros(alert.threshold_cents) + ")",
        "num");
    }, "no bar returns more than it takes", 4);
    fillTable("declines", data.recent_declines, function (row, decline) {
      cell(row, time(decline.at));
      cell(row, decline.kiosk_id || decline.source || "");
      cell(row, decline.card_uid || "");
      badge(row, decline.error_code || decline.status, decline.status === "declined" ? "warn" : "bad");
      cell(row, decline.amount_cents === null ? "" : euros(decline.amount_cents), "num");
    }, "no declines", 5);
    fillTable("topups", data.topups.recent, function (row, topup) {
      cell(row, time(topup.at));
      cell(row, topup.card_uid);
      cell(row, topup.payment_method);
      cell(row, topup.where || "");
      cell(row, euros(topup.amount_cents), "num");
    }, "no top-ups yet", 5);
    fillTable("errors", data.error_rates, function (row, rate) {
      var kind = rate.status === "approved" || rate.status === "replayed" ? "ok" :
        (rate.status === "declined" ? "warn" : "bad");
      badge(row, rate.status, kind);
      cell(row, rate.count, "num");
      cell(row, Number(rate.percentage).toFixed(2) + " %", "num");
    }, "no traffic in the last hour", 3);
  }

  function renderLedger(report) {
    var ok = report.ok;
    var state = $("ledger-state");
    state.textContent = ok ? "OK" : "VIOLATION";
    state.style.color = ok ? "var(--ok)" : "var(--bad)";
    $("ledger-detail").textContent = ok ? "all invariants hold" :
      (report.violations || []).slice(0, 2).join("; ");
  }

  function refresh() {
    window.clearTimeout(refreshTimer);
    var calls = [api("/api/monitoring/dashboard")];
    var now = Date.now();
    if (now - lastLedgerCheck > LEDGER_REFRESH_MS) { calls.push(api("/api/monitoring/ledger")); }
    Promise.all(calls).then(function (results) {
      showDashboard();
      render(results[0]);
      if (results.length > 1) { lastLedgerCheck = now; renderLedger(results[1]); }
      setStatus("updated " + new Date().toLocaleTimeString("en-GB", { hour12: false }), false);
      document.body.setAttribute("data-loaded", "true");
      refreshTimer = window.setTimeout(refresh, REFRESH_MS);
    }).catch(function (error) {
      if (error.unauthorized) {
        window.sessionStorage.removeItem(TOKEN_KEY);
        showLogin("That token was refused.");
        return;
      }
      setStatus("update failed (" + error.message + "), retrying", true);
      refreshTimer = window.setTimeout(refresh, REFRESH_MS);
    });
  }

  function start() {
    $("login-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var value = $("token").value.trim();
      if (!value) { return; }
      window.sessionStorage.setItem(TOKEN_KEY, value);
      $("token").value = "";
      lastLedgerCheck = 0;
      refresh();
    });
    $("logout").addEventListener("click", function () {
      window.clearTimeout(refreshTimer);
      window.sessionStorage.removeItem(TOKEN_KEY);
      showLogin("");
    });
    if (token()) { refresh(); } else { showLogin(""); }
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); }
  else { start(); }
}());
