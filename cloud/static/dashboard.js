// Live operations dashboard: plain JS + SVG, and uPlot (vendored under /static/vendor/uplot/,
// no CDN: the site may be offline) for the sales-per-15-minutes chart.
// The admin token is asked for once and kept in sessionStorage (this tab only); every call to
// the monitoring API sends it as a bearer token. Data is written with textContent only.
// Every amount is formatted in the deployment's currency (FESTIVAL_CURRENCY, from the API).
(function () {
  "use strict";

  var TOKEN_KEY = "festival.adminToken";
  var REFRESH_MS = 5000;
  var LEDGER_REFRESH_MS = 60000;
  // The per-bar, per-product and per-15-minutes reports scan a day of sales lines: not every 5 s.
  var REPORTS_REFRESH_MS = 30000;
  var REPORT_HOURS = 24;
  var QUARTER_MS = 15 * 60 * 1000;
  var LOCALE = "en-GB";
  var CARD_UID = /^([0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})$/;
  var SVG_NS = "http://www.w3.org/2000/svg";
  var refreshTimer = null;
  var lastLedgerCheck = 0;
  var lastReports = 0;
  var currency = null;
  var moneyFormat = null;
  var quarterChart = null;
  var shownCard = null;

  function $(id) { return document.getElementById(id); }

  function token() { return window.sessionStorage.getItem(TOKEN_KEY); }

  function setCurrency(code) {
    if (!code || code === currency) { return; }
    currency = code;
    try {
      // Amounts are hundredths of the currency everywhere in this system: always two digits.
      moneyFormat = new Intl.NumberFormat(LOCALE, {
        style: "currency", currency: code, minimumFractionDigits: 2, maximumFractionDigits: 2
      });
    } catch (error) {
      moneyFormat = null;  // an ISO code this browser does not know: "12.50 XYZ" below
    }
    Array.prototype.forEach.call(document.querySelectorAll(".currency"), function (element) {
      element.textContent = code;
    });
  }

  // Cents as the decimal string "12.50", by integer arithmetic (exact for any bigint-sized
  // amount a JSON number carries exactly); Intl.NumberFormat formats the string as a decimal.
  function decimal(cents) {
    var absolute = Math.abs(cents);
    var fraction = String(absolute % 100);
    return (cents < 0 ? "-" : "") + String(Math.floor(absolute / 100)) + "." +
      (fraction.length < 2 ? "0" + fraction : fraction);
  }

  function money(cents) {
    if (cents === null || cents === undefined) { return "–"; }
    if (moneyFormat) { return moneyFormat.format(decimal(cents)); }
    return decimal(cents) + (currency ? " " + currency : "");
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

  // A failed API call whose token was refused: forget the token, show the login (true).
  // Any other failure is the caller's to show (false).
  function tokenRefused(error) {
    if (!error.unauthorized) { return false; }
    window.sessionStorage.removeItem(TOKEN_KEY);
    showLogin("That token was refused.");
    return true;
  }

  function showDashboard() {
    $("login").classList.add("hidden");
    $("dashboard").classList.remove("hidden");
  }

  // The request with the admin token (and `body` as JSON, if given); resolves with the
  // response, rejects on a 401 with an error marked `unauthorized` (the token was refused).
  function send(path, method, body) {
    var headers = { "Authorization": "Bearer " + token(), "Accept": "application/json" };
    var options = { method: method || "GET", headers: headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return window.fetch(path, options).then(function (response) {
      if (response.status === 401) {
        var refused = new Error("token refused");
        refused.unauthorized = true;
        throw refused;
      }
      return response;
    });
  }

  function api(path, method, body) {
    return send(path, method, body).then(function (response) {
      if (!response.ok) {
        var failed = new Error(path + " answered " + response.status);
        failed.status = response.status;
        throw failed;
      }
      return response.json();
    });
  }

  // Like api(), but every answer but 401 resolves as {status, body}: the editor shows the
  // API's error (and the field it names) itself.
  function apiCall(path, method, body) {
    return send(path, method, body).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (parsed) {
        return { status: response.status, body: parsed };
      });
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
    var width = 1000, height = 220, left = 72, bottom = 20, top = 10;
    var plotWidth = width - left - 4, plotHeight = height - bottom - top;
    var maximum = 0;
    points.forEach(function (point) { maximum = Math.max(maximum, point.amount_cents); });
    var scaleMax = maximum > 0 ? maximum : 100;
    svg("line", { x1: left, y1: top + plotHeight, x2: width, y2: top + plotHeight, "class": "axis" }, chart);
    [0, 0.5, 1].forEach(function (fraction) {
      var y = top + plotHeight - fraction * plotHeight;
      svg("line", { x1: left, y1: y, x2: width, y2: y, "class": "axis", "stroke-dasharray": "2,4" }, chart);
      var label = svg("text", { x: left - 6, y: y + 3, "text-anchor": "end" }, chart);
      label.textContent = money(Math.round(scaleMax * fraction)).replace(/\.00$/, "");
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
      title.textContent = time(point.minute) + ": " + money(point.amount_cents) + " in " +
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

  // (1.1) Payouts after the festival: parts by state, the Stripe refund queue, the failures.
  function renderPayouts(payouts) {
    if (!payouts) { return; }
    var states = payouts.by_state;
    function tile(id, figures, text) {
      $(id).textContent = money(figures.amount_cents);
      $(id + "-sub").textContent = plural(figures.count, "part") + text;
    }
    tile("payouts-pending", states.pending, " to pay, of " + plural(payouts.requests, "request"));
    tile("payouts-refunds", payouts.refund_queue, " to refund through Stripe");
    tile("payouts-exported", states.exported, " in a SEPA file, not yet paid");
    tile("payouts-paid", states.paid, "; kept: " + money(payouts.kept.donation_cents) +
      " donations, " + money(payouts.kept.fee_cents) + " fees");
    tile("payouts-failed", states.failed, " (money back on the cards)");
    $("payouts-failed").parentNode.classList.toggle("alert", states.failed.count > 0);
    fillTable("payout-failures-table", payouts.failures, function (tr, failure) {
      cell(tr, failure.failed_at ? time(failure.failed_at) : "–");
      cell(tr, failure.card_uid);
      cell(tr, failure.kind);
      cell(tr, money(failure.amount_cents), "num");
      cell(tr, failure.reason || "");
    }, "No failed payout", 5);
  }

  // (1.1) Offline sales: what the offline kiosks may be selling (their kiosk_max_cents summed),
  // what came back today, what attendees owe, and the kiosks past the 24-hour bound.
  function renderOffline(offline) {
    if (!offline) { return; }
    var kiosks = offline.kiosks_offline.kiosks || [];
    $("offline-exposure").textContent = money(offline.exposure_cents);
    $("offline-kiosks").textContent = plural(offline.kiosks_offline.count, "kiosk") + " offline" +
      (kiosks.length ? ": " + kiosks.map(function (k) { return k.kiosk_id; }).join(", ") : "");
    $("offline-synced").textContent = money(offline.synced_today.amount_cents);
    $("offline-shortfall").textContent = plural(offline.synced_today.count, "sale") + ", " +
      money(offline.synced_today.shortfall_cents) + " unpaid (new debts)";
    $("offline-debts").textContent = money(offline.open_debts.total_cents);
    $("offline-debt-cards").textContent = plural(offline.open_debts.cards, "card") + " owing";
    var over = offline.over_bound || [];
    $("offline-bound").textContent = over.length ? over.length + " over" : "ok";
    $("offline-bound").parentNode.classList.toggle("alert", over.length > 0);
    $("offline-bound-kiosks").textContent = over.length
      ? over.map(function (k) { return k.kiosk_id + " " + money(k.created_cents); }).join(", ") +
        ": offline sales refused"
      : "no kiosk past 2 × its offline limit";
  }

  function render(data) {
    setCurrency(data.currency);
    Array.prototype.forEach.call(document.querySelectorAll(".window"), function (element) {
      element.textContent = String(data.window_minutes);
    });
    $("sales-amount").textContent = money(data.sales.amount_cents);
    $("sales-orders").textContent = plural(data.sales.orders, "order");
    var points = data.sales_per_minute || [];
    var last = points.length ? points[points.length - 1] : { amount_cents: 0, orders: 0 };
    $("sales-rate").textContent = money(last.amount_cents);
    $("sales-rate-sub").textContent = plural(last.orders, "order") + " in the current minute";
    $("topups-amount").textContent = money(data.topups.amount_cents);
    var methods = data.topups.by_method || {};
    $("topups-split").textContent = ["cash", "card", "stripe"].map(function (method) {
      return method + " " + money(methods[method] || 0);
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

    renderOffline(data.offline);
    renderPayouts(data.payouts);
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
    renderKioskConfigs(data.kiosks);
    // DESIGN.md 1.1: a bar paying out far more cup returns than it takes in deposits.
    var alerts = data.return_alerts || [];
    $("return-alerts-panel").setAttribute("data-alerts", String(alerts.length));
    $("return-alerts-panel").classList.toggle("alert", alerts.length > 0);
    fillTable("return-alerts", alerts, function (row, alert) {
      badge(row, alert.kiosk_id, "bad");
      cell(row, money(alert.deposits_cents), "num");
      cell(row, money(alert.returns_cents), "num");
      cell(row, money(alert.excess_cents) + " (alert above " + money(alert.threshold_cents) + ")",
        "num");
    }, "no bar returns more than it takes", 4);
    // (1.1) Genuine wristbands: a rising count of stale SUN counters is a cloning alarm.
    var sun = data.sun || {failures_by_reason: {}, stale_cards: []};
    var alarm = Boolean(sun.cloning_alarm);
    $("sun-panel").setAttribute("data-alarm", String(alarm));
    $("sun-panel").classList.toggle("alert", alarm);
    $("sun-alarm").textContent = (alarm ? "Cloning alarm: " : "") + sun.stale_counter_recent +
      " stale counters in the last " + sun.alarm_window_minutes + " min (" +
      sun.stale_counter_before + " in the " + sun.alarm_window_minutes + " min before)" +
      (sun.card_auth === "sun" ? "" : " \u2014 FESTIVAL_CARD_AUTH is " + sun.card_auth);
    var reasons = Object.keys(sun.failures_by_reason).sort().map(function (reason) {
      return {reason: reason, count: sun.failures_by_reason[reason]};
    });
    fillTable("sun-failures", reasons, function (row, item) {
      badge(row, item.reason, item.reason === "stale_counter" ? "bad" : "warn");
      cell(row, String(item.count), "num");
    }, "no SUN failures", 2);
    fillTable("sun-cards", sun.stale_cards, function (row, card) {
      cell(row, card.card_uid);
      cell(row, String(card.stale_count), "num");
      cell(row, time(card.last_stale_at));
    }, "no wristband with a stale counter", 3);
    fillTable("declines", data.recent_declines, function (row, decline) {
      cell(row, time(decline.at));
      cell(row, decline.kiosk_id || decline.source || "");
      cell(row, decline.card_uid || "");
      badge(row, decline.error_code || decline.status, decline.status === "declined" ? "warn" : "bad");
      cell(row, decline.amount_cents === null ? "" : money(decline.amount_cents), "num");
    }, "no declines", 5);
    fillTable("topups", data.topups.recent, function (row, topup) {
      cell(row, time(topup.at));
      cell(row, topup.card_uid);
      cell(row, topup.payment_method);
      cell(row, topup.where || "");
      cell(row, money(topup.amount_cents), "num");
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

  // --- the reports: sales per bar, per product, per 15 minutes (GET /api/reports/sales) ------

  function reportStart(now) {
    var end = Math.floor(now / QUARTER_MS) * QUARTER_MS;
    return end - (REPORT_HOURS * 4 - 1) * QUARTER_MS;
  }

  function reportCalls(now) {
    var since = encodeURIComponent(new Date(reportStart(now)).toISOString());
    return ["kiosk", "product", "quarter_hour"].map(function (group) {
      return api("/api/reports/sales?group=" + group + "&from=" + since);
    });
  }

  function cssColor(name, fallback) {
    var value = window.getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function chartWidth() {
    return Math.max(320, $("quarter-chart-plot").clientWidth || 0);
  }

  function drawQuarterChart(report, now) {
    var start = reportStart(now);
    var byQuarter = {};
    report.rows.forEach(function (row) { byQuarter[Date.parse(row.quarter_hour)] = row; });
    var xs = [], ys = [], total = 0;
    for (var at = start, index = 0; index < REPORT_HOURS * 4; index += 1, at += QUARTER_MS) {
      var row = byQuarter[at];
      xs.push(at / 1000);
      // Pixels only: the figures shown as text come from the integer cents.
      ys.push(row ? row.amount_cents / 100 : 0);
      total += row ? row.amount_cents : 0;
    }
    var plot = $("quarter-chart-plot");
    plot.setAttribute("data-points", String(xs.length));
    plot.setAttribute("data-amount-cents", String(total));
    if (typeof window.uPlot !== "function") {
      plot.textContent = "chart library not loaded";
      return;
    }
    if (quarterChart === null) {
      var muted = cssColor("--muted", "#93a0ba");
      var grid = cssColor("--panel-edge", "#26314a");
      var axis = {
        stroke: muted, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }
      };
      quarterChart = new window.uPlot({
        width: chartWidth(),
        height: 220,
        legend: { show: false },
        cursor: { y: false },
        scales: { x: { time: true } },
        axes: [
          axis,
          Object.assign({}, axis, {
            size: 80,
            values: function (u, splits) {
              return splits.map(function (value) { return money(Math.round(value * 100)); });
            }
          })
        ],
        series: [
          {},
          {
            label: "Sales",
            stroke: cssColor("--bar", "#4f8cff"),
            fill: cssColor("--bar", "#4f8cff"),
            paths: window.uPlot.paths.bars({ size: [0.8, 40] }),
            points: { show: false }
          }
        ]
      }, [xs, ys], plot);
      window.addEventListener("resize", function () {
        quarterChart.setSize({ width: chartWidth(), height: 220 });
      });
    } else {
      quarterChart.setData([xs, ys]);
    }
  }

  function renderReports(perBar, perProduct, perQuarter, now) {
    setCurrency(perBar.currency);
    fillTable("sales-per-bar", perBar.rows, function (row, bar) {
      cell(row, bar.kiosk_id);
      cell(row, bar.orders, "num");
      cell(row, money(bar.amount_cents), "num");
    }, "no sales in the last 24 hours", 3);
    $("sales-per-bar-orders").textContent = String(perBar.total.orders);
    $("sales-per-bar-total").textContent = money(perBar.total.amount_cents);
    fillTable("sales-per-product", perProduct.rows, function (row, product) {
      cell(row, product.sku || "—");
      cell(row, product.name);
      cell(row, product.quantity, "num");
      cell(row, money(product.amount_cents), "num");
    }, "no sales in the last 24 hours", 4);
    $("sales-per-product-quantity").textContent = String(perProduct.total.quantity);
    $("sales-per-product-total").textContent = money(perProduct.total.amount_cents);
    drawQuarterChart(perQuarter, now);
    $("sales-tables").setAttribute("data-loaded", "true");
  }

  function refresh() {
    window.clearTimeout(refreshTimer);
    var calls = [api("/api/monitoring/dashboard")];
    var now = Date.now();
    var withLedger = now - lastLedgerCheck > LEDGER_REFRESH_MS;
    var withReports = now - lastReports > REPORTS_REFRESH_MS;
    if (withLedger) { calls.push(api("/api/monitoring/ledger")); }
    if (withReports) { calls = calls.concat(reportCalls(now)); }
    Promise.all(calls).then(function (results) {
      showDashboard();
      render(results[0]);
      var next = 1;
      if (withLedger) { lastLedgerCheck = now; renderLedger(results[next]); next += 1; }
      if (withReports) {
        lastReports = now;
        loadShifts();
        loadStaff();
        renderReports(results[next], results[next + 1], results[next + 2], now);
      }
      setStatus("updated " + new Date().toLocaleTimeString("en-GB", { hour12: false }), false);
      document.body.setAttribute("data-loaded", "true");
      refreshTimer = window.setTimeout(refresh, REFRESH_MS);
    }).catch(function (error) {
      if (tokenRefused(error)) { return; }
      setStatus("update failed (" + error.message + "), retrying", true);
      refreshTimer = window.setTimeout(refresh, REFRESH_MS);
    });
  }

  // --- kiosks and their configs (GET /api/monitoring/dashboard's kiosks) --------------------

  function version(value) { return value === null || value === undefined ? "–" : "v" + value; }

  function offlineText(policy) {
    if (!policy) { return "not allowed"; }
    return "≤ " + money(policy.sale_max_cents) + " a sale, " + money(policy.card_max_cents) +
      " a card, " + money(policy.kiosk_max_cents) + " a kiosk";
  }

  function renderKioskConfigs(kiosks) {
    fillTable("kiosk-config-table", kiosks, function (row, kiosk) {
      var latest = kiosk.latest_config_version;
      var runs = kiosk.config_version;
      row.setAttribute("data-kiosk-id", kiosk.kiosk_id);
      row.setAttribute("data-runs", runs === null || runs === undefined ? "" : String(runs));
      row.setAttribute("data-latest", latest === null || latest === undefined ? "" : String(latest));
      row.setAttribute("data-published", String(Boolean(kiosk.latest_config_published)));
      cell(row, kiosk.kiosk_id);
      cell(row, kiosk.role);
      cell(row, version(runs), "num");
      cell(row, version(latest), "num");
      if (latest === null || latest === undefined) { cell(row, ""); }
      else if (kiosk.latest_config_published) { badge(row, "published", "ok"); }
      else { badge(row, "pending", "warn"); }
      if (!kiosk.enabled) { badge(row, "disabled", "disabled"); }
      else if (latest === null || latest === undefined) { badge(row, "no config", "unknown"); }
      else if (runs === latest) { badge(row, "up to date", "ok"); }
      else { badge(row, runs === null || runs === undefined ? "not cited yet" : "behind", "warn"); }
      cell(row, kiosk.menu_id || "no menu");
      cell(row, offlineText(kiosk.offline_policy));
    }, "no kiosk registered", 8);
    updateTargets(kiosks);
  }

  // --- the menu editor: GET /api/admin/kiosks/{id}/menu, PUT /api/admin/menus --------------

  var ROLES = ["bar", "checkpoint", "all"];
  var PRICE_TEXT = /^(\d{1,7})(?:[.,](\d{1,2}))?$/;
  var PERCENT_TEXT = /^(\d{1,3})(?:[.,](\d{1,2}))?$/;
  var FIELD_KEYS = {
    sku: "sku", name: "name", unit_price_cents: "price", is_deposit: "deposit",
    is_return: "return", vat_rate_bp: "vat", category: "category"
  };
  var knownKiosks = [];
  var targetsKey = null;

  function updateTargets(kiosks) {
    knownKiosks = kiosks.map(function (kiosk) {
      return { kiosk_id: kiosk.kiosk_id, role: kiosk.role };
    });
    var key = knownKiosks.map(function (kiosk) { return kiosk.kiosk_id + ":" + kiosk.role; }).join(",");
    if (key === targetsKey) { return; }
    targetsKey = key;
    var select = $("menu-target");
    var chosen = select.value;
    select.textContent = "";
    function option(value, text) {
      var element = document.createElement("option");
      element.value = value;
      element.textContent = text;
      select.appendChild(element);
    }
    knownKiosks.forEach(function (kiosk) {
      option("kiosk:" + kiosk.kiosk_id, kiosk.kiosk_id + " (" + kiosk.role + ")");
    });
    ROLES.forEach(function (role) { option("role:" + role, "every kiosk with role " + role); });
    option("all", "all kiosks");
    if (chosen && Array.prototype.some.call(select.options, function (item) { return item.value === chosen; })) {
      select.value = chosen;
    }
  }

  // The kiosks a target names, as the API resolves them (registered, disabled ones too).
  function targetKiosks(target) {
    if (target.indexOf("kiosk:") === 0) { return [target.slice(6)]; }
    return knownKiosks.filter(function (kiosk) {
      return target === "all" || "role:" + kiosk.role === target;
    }).map(function (kiosk) { return kiosk.kiosk_id; }).sort();
  }

  function targetBody(target) {
    if (target.indexOf("kiosk:") === 0) { return { kiosks: [target.slice(6)] }; }
    if (target.indexOf("role:") === 0) { return { role: target.slice(5) }; }
    return { all: true };
  }

  function menuMessage(text, kind) {
    var message = $("menu-message");
    message.textContent = text || "";
    message.className = "message " + (kind || "error") + (text ? "" : " hidden");
  }

  function clearFieldErrors() {
    Array.prototype.forEach.call($("menu-editor").querySelectorAll(".field-error"), function (element) {
      element.textContent = "";
    });
    Array.prototype.forEach.call($("menu-editor").querySelectorAll("input.invalid"), function (element) {
      element.classList.remove("invalid");
    });
  }

  function fieldError(field, text) {
    var element = $("menu-editor").querySelector('.field-error[data-field="' + field + '"]');
    if (!element) { return false; }
    element.textContent = text;
    var input = element.parentNode.querySelector("input");
    if (input) { input.classList.add("invalid"); }
    return true;
  }

  // Hundredths as text and back, by string and integer arithmetic only: a price typed as
  // "4.5" is 450 cents exactly, never 4.5 * 100 in floating point.
  function hundredthsText(value) {
    var text = decimal(value);
    return text.slice(-3) === ".00" ? text.slice(0, -3) : text;
  }

  function parseHundredths(text, pattern) {
    var match = pattern.exec(text);
    if (!match) { return null; }
    var fraction = match[2] || "";
    while (fraction.length < 2) { fraction += "0"; }
    return parseInt(match[1], 10) * 100 + parseInt(fraction, 10);
  }

  function textInput(className, value, maxLength) {
    var input = document.createElement("input");
    input.type = "text";
    input.className = className;
    input.autocomplete = "off";
    input.spellcheck = false;
    if (maxLength) { input.maxLength = maxLength; }
    input.value = value === null || value === undefined ? "" : String(value);
    return input;
  }

  function editorCell(row, className, control) {
    var td = document.createElement("td");
    td.className = className;
    td.appendChild(control);
    var error = document.createElement("span");
    error.className = "field-error";
    td.appendChild(error);
    row.appendChild(td);
    return td;
  }

  function checkbox(className, checked) {
    var input = document.createElement("input");
    input.type = "checkbox";
    input.className = className;
    input.checked = Boolean(checked);
    return input;
  }

  // Each row's error slots carry the API's field path (menu.items[N].…): renumbered whenever
  // a row is added or removed, so an error the API names lands next to its field.
  function renumberRows() {
    Array.prototype.forEach.call($("menu-items").querySelectorAll("tbody tr"), function (row, index) {
      row.setAttribute("data-index", String(index));
      Array.prototype.forEach.call(row.querySelectorAll("td"), function (td) {
        var error = td.querySelector(".field-error");
        if (!error) { return; }
        var key = td.getAttribute("data-key");
        error.setAttribute("data-field", "menu.items[" + index + "]" + (key ? "." + key : ""));
      });
    });
  }

  function addRow(item) {
    item = item || {};
    var row = document.createElement("tr");
    var cells = [
      ["sku", "sku", textInput("sku", item.sku, 32)],
      ["name", "name", textInput("name", item.name, 64)],
      ["price", "unit_price_cents", textInput("price",
        item.unit_price_cents === undefined ? "" : decimal(item.unit_price_cents), 10)],
      ["flag", "is_deposit", checkbox("deposit", item.is_deposit)],
      ["flag", "is_return", checkbox("return", item.is_return)],
      ["vat", "vat_rate_bp", textInput("vat",
        item.vat_rate_bp === undefined || item.vat_rate_bp === null ? "" : hundredthsText(item.vat_rate_bp), 6)],
      ["category", "category", textInput("category", item.category, 32)]
    ];
    cells.forEach(function (spec) {
      editorCell(row, spec[0], spec[2]).setAttribute("data-key", spec[1]);
    });
    var remove = document.createElement("button");
    remove.type = "button";
    remove.className = "link remove-row";
    remove.textContent = "remove";
    remove.addEventListener("click", function () {
      row.parentNode.removeChild(row);
      renumberRows();
    });
    editorCell(row, "row", remove);  // its error slot: the row as a whole (menu.items[N])
    $("menu-items").querySelector("tbody").appendChild(row);
    renumberRows();
    return row;
  }

  function showMenu(menu) {
    clearFieldErrors();
    $("menu-items").querySelector("tbody").textContent = "";
    $("menu-id").value = menu ? menu.menu_id : "";
    (menu ? menu.items : [{}]).forEach(addRow);
  }

  function loadMenu() {
    var target = $("menu-target").value;
    var kiosks = targetKiosks(target);
    menuMessage("");
    if (!kiosks.length) {
      showMenu(null);
      $("menu-source").textContent = "No kiosk has that role: a new, empty menu.";
      return Promise.resolve();
    }
    var source = kiosks[0];
    return apiCall("/api/admin/kiosks/" + encodeURIComponent(source) + "/menu", "GET")
      .then(function (answer) {
        if (answer.status !== 200) { throw new Error(answerText(answer)); }
        showMenu(answer.body.menu);
        var from = kiosks.length > 1 ? "Loaded from " + source + " (the first of " + kiosks.length + " kiosks), " : source + ": ";
        $("menu-source").textContent = from + (answer.body.version === null ? "never configured" :
          "config " + version(answer.body.version) + (answer.body.published ? ", published" : ", pending")) +
          (answer.body.menu ? "" : ", no menu — a new, empty one below") + ".";
        $("menu-editor").setAttribute("data-loaded", source);
      })
      .catch(editorFailed);
  }

  function readMenu() {
    var errors = 0;
    function problem(field, text) { errors += 1; fieldError(field, text); }
    var menuId = $("menu-id").value.trim();
    if (!menuId) { problem("menu.menu_id", "a menu id is required"); }
    var seen = {};
    var items = [];
    Array.prototype.forEach.call($("menu-items").querySelectorAll("tbody tr"), function (row, index) {
      var where = "menu.items[" + index + "].";
      var value = function (name) { return row.querySelector("input." + name).value.trim(); };
      var item = { sku: value("sku"), name: value("name") };
      if (!item.sku) { problem(where + "sku", "required"); }
      else if (seen[item.sku] !== undefined) {
        problem(where + "sku", "SKU " + item.sku + " is already row " + (seen[item.sku] + 1));
      } else { seen[item.sku] = index; }
      if (!item.name) { problem(where + "name", "required"); }
      var price = parseHundredths(value("price"), PRICE_TEXT);
      if (price === null) {
        problem(where + "unit_price_cents", value("price") ? "a price like 4.50" : "required");
      }
      item.unit_price_cents = price;
      if (row.querySelector("input.deposit").checked) { item.is_deposit = true; }
      if (row.querySelector("input.return").checked) { item.is_return = true; }
      if (value("vat")) {
        var rate = parseHundredths(value("vat"), PERCENT_TEXT);
        if (rate === null) { problem(where + "vat_rate_bp", "a rate in percent like 19 or 7.5"); }
        item.vat_rate_bp = rate;
      }
      if (value("category")) { item.category = value("category"); }
      items.push(item);
    });
    if (!items.length) { problem("menu.items", "add at least one row"); }
    return errors ? null : { menu_id: menuId, items: items };
  }

  // The API's message, with its bounds in the units the editor shows (money, percent).
  function editorText(field, message) {
    var bounds = /must be (-?\d+)\.\.(-?\d+), got (-?\d+)/.exec(message);
    if (bounds && /\.unit_price_cents$/.test(field)) {
      return "must be between " + money(Number(bounds[1])) + " and " + money(Number(bounds[2]));
    }
    if (bounds && /\.vat_rate_bp$/.test(field)) {
      return "must be between " + hundredthsText(Number(bounds[1])) + " % and " +
        hundredthsText(Number(bounds[2])) + " %";
    }
    return message.replace(/^menu(\.[a-z_]+|\[\d+\])*\s*/, "") || message;
  }

  function answerText(answer) {
    return (answer.body && answer.body.error) || ("the API answered " + answer.status);
  }

  function editorFailed(error) {
    if (tokenRefused(error)) { return; }
    menuMessage(error.message);
  }

  function saveMenu(clear) {
    clearFieldErrors();
    menuMessage("");
    var target = $("menu-target").value;
    if (!target) { menuMessage("pick the kiosks first"); return; }
    var menu = clear ? null : readMenu();
    if (!clear && menu === null) {
      menuMessage("Nothing was saved: fix the fields marked in red.");
      return;
    }
    var body = targetBody(target);
    body.menu = menu;
    $("menu-save").disabled = true;
    $("menu-clear").disabled = true;
    apiCall("/api/admin/menus", "PUT", body).then(function (answer) {
      if (answer.status === 200) {
        var versions = answer.body.versions;
        $("menu-editor").setAttribute("data-saved", JSON.stringify(versions));
        menuMessage((clear ? "Menu cleared" : "Menu " + answer.body.menu_id + " saved") + ": " +
          Object.keys(versions).sort().map(function (kiosk) {
            return kiosk + " " + version(versions[kiosk]);
          }).join(", ") + ". The kiosks get it once it is published.", "ok");
        refresh();
        return;
      }
      // 400 names the field (shown next to it); 404: a kiosk not registered. Nothing issued.
      var field = answer.body && answer.body.field;
      if (field && fieldError(field, editorText(field, answerText(answer)))) {
        menuMessage("Nothing was saved: fix the field marked in red.");
      } else {
        menuMessage("Nothing was saved: " + answerText(answer));
      }
    }).catch(editorFailed).then(function () {
      $("menu-save").disabled = false;
      $("menu-clear").disabled = false;
    });
  }

  // --- card lookup: GET /api/cards/{uid}, POST …/block and …/unblock -----------------------

  function cardMessage(text, kind) {
    var message = $("card-message");
    message.textContent = text || "";
    message.className = "message " + (kind || "error") + (text ? "" : " hidden");
  }

  function renderCard(card) {
    shownCard = card.card_uid;
    $("card-result").classList.remove("hidden");
    $("card-result-uid").textContent = card.card_uid;
    var status = $("card-status");
    status.textContent = "";
    var span = document.createElement("span");
    span.className = "badge " + (card.status === "active" ? "ok" : "bad");
    span.textContent = card.status;
    status.appendChild(span);
    $("card-result").setAttribute("data-status", card.status);
    $("card-balance").textContent = money(card.balance_cents);
    // Debts arrive with offline sales (DESIGN.md 1.1): shown once the API reports them.
    // (1.1) every card now names its debt_cents (0 without one): the row shows only a debt
    var hasDebt = typeof card.debt_cents === "number" && card.debt_cents > 0;
    $("card-debt-row").classList.toggle("hidden", !hasDebt);
    $("card-debt").textContent = hasDebt ? money(card.debt_cents) : "";
    $("card-block").disabled = card.status === "blocked";
    $("card-unblock").disabled = card.status !== "blocked";
    if (card.transactions !== undefined) {
      fillTable("card-history", card.transactions, function (row, movement) {
        var at = new Date(movement.created_at);
        cell(row, isNaN(at.getTime()) ? String(movement.created_at) :
          at.toLocaleString(LOCALE, { hour12: false }));
        cell(row, movement.kind);
        cell(row, money(movement.amount_cents), "num");
        cell(row, movement.balance_after_cents === null ? "" :
          money(movement.balance_after_cents), "num");
      }, "no movements", 4);
    }
  }

  function cardFailed(error) {
    if (tokenRefused(error)) { return; }
    cardMessage(error.status === 404 ? "unknown card" :
      (error.status === 400 ? "not a card UID" : "lookup failed (" + error.message + ")"));
  }

  function lookUpCard(uid) {
    cardMessage("");
    return api("/api/cards/" + encodeURIComponent(uid) + "?limit=20").then(renderCard)
      .catch(function (error) {
        $("card-result").classList.add("hidden");
        shownCard = null;
        cardFailed(error);
      });
  }

  function changeCard(action) {
    if (!shownCard) { return; }
    var uid = shownCard;
    var body = action === "block" ? { reason: "blocked from the dashboard" } : undefined;
    $("card-block").disabled = true;
    $("card-unblock").disabled = true;
    api("/api/cards/" + encodeURIComponent(uid) + "/" + action, "POST", body)
      .then(function () {
        return lookUpCard(uid).then(function () {
          cardMessage("card " + uid + (action === "block" ? " blocked" : " unblocked"), "ok");
        });
      })
      .catch(cardFailed);
  }

  // --- who sold what: sales and top-ups per staff member (issue 17 section 3) ----------------
  // GET /api/reports/staff without from/to: today in UTC, as the Z-report reads a day. Loaded
  // with the other reports (every REPORTS_REFRESH_MS). A row without a staff id is "(none)".

  var NO_STAFF = "(none)";

  function countAndMoney(count, noun, cents) {
    return count === 0 ? "–" : plural(count, noun) + ", " + money(cents);
  }

  function staffCells(row, figures) {
    cell(row, figures.orders, "num");
    cell(row, money(figures.orders_cents), "num");
    cell(row, countAndMoney(figures.voided_orders, "order", figures.voided_cents), "num");
    cell(row, money(figures.net_cents), "num net");
    cell(row, countAndMoney(figures.voids_made, "void", figures.voids_made_cents), "num");
    cell(row, countAndMoney(figures.cash_topups, "top-up", figures.cash_topups_cents), "num");
    cell(row, countAndMoney(figures.card_topups, "top-up", figures.card_topups_cents), "num");
    cell(row, countAndMoney(figures.cash_outs, "cash-out", figures.cash_out_cents), "num");
  }

  function renderStaff(report) {
    setCurrency(report.currency);
    staffMessage("");
    fillTable("staff-table", report.rows, function (row, member) {
      if (member.staff_id === null) {
        row.className = "no-staff";
        cell(row, NO_STAFF, "empty");
      } else {
        row.setAttribute("data-staff-id", member.staff_id);
        // the name and role of a staff member registered with `staff add`
        var who = member.name ? member.staff_id + " \u2014 " + member.name + " (" + member.role + ")"
                              : member.staff_id;
        // where they are logged in now (revision 0024)
        if (member.logged_in_at && member.logged_in_at.length) {
          who += " \u00b7 at " + member.logged_in_at.join(", ");
        }
        cell(row, who);
      }
      staffCells(row, member);
      cell(row, member.kiosks.join(", "), "kiosks");
    }, "nothing sold or topped up today", 10);
    var total = report.total;
    $("staff-total-orders").textContent = String(total.orders);
    $("staff-total-sales").textContent = money(total.orders_cents);
    $("staff-total-voided").textContent = money(total.voided_cents);
    $("staff-total-net").textContent = money(total.net_cents);
    $("staff-total-voids-made").textContent = money(total.voids_made_cents);
    $("staff-total-cash").textContent = money(total.cash_topups_cents);
    $("staff-total-card").textContent = money(total.card_topups_cents);
    $("staff-total-cash-outs").textContent = money(total.cash_out_cents);
    $("staff").setAttribute("data-loaded", "true");
  }

  function staffMessage(text) {
    var message = $("staff-message");
    message.textContent = text || "";
    message.className = "message error" + (text ? "" : " hidden");
  }

  function staffFailed(error) {
    if (tokenRefused(error)) { return; }
    staffMessage("could not load the staff report (" + error.message + ")");
  }

  function loadStaff() {
    return api("/api/reports/staff").then(renderStaff).catch(staffFailed);
  }

  // --- cash drawers: the open shifts and the shift close (issue 17 section 4) ----------------
  // GET /api/reports/shifts (its total rows without closed_at: the open shifts, expected so
  // far) and POST /api/shifts/close {checkpoint_id, counted_cents}, the CLI's own close.

  // A counted amount in the currency's units, "49.90" or "49,9" or "50": cents by integer
  // arithmetic (parseHundredths), never a float times 100.
  var COUNTED_AMOUNT = /^(\d{1,10})(?:[.,](\d{1,2}))?$/;

  function shiftMessage(text, kind) {
    var message = $("shift-message");
    message.textContent = text || "";
    message.className = "message " + (kind || "error") + (text ? "" : " hidden");
  }

  function renderShifts(report) {
    var open = report.rows.filter(function (row) {
      return row.row === "total" && row.closed_at === null;
    });
    fillTable("open-shifts", open, function (row, shift) {
      row.setAttribute("data-checkpoint-id", shift.checkpoint_id);
      cell(row, shift.checkpoint_id);
      cell(row, shift.shift_no, "num");
      cell(row, shift.opened_at ? new Date(shift.opened_at).toLocaleString(LOCALE, { hour12: false }) :
        "the first top-up");
      cell(row, plural(shift.cash_topups, "top-up") + ", " + money(shift.cash_topups_cents), "num");
      cell(row, plural(shift.card_topups, "top-up") + ", " + money(shift.card_topups_cents), "num");
      cell(row, money(shift.cash_paid_out_cents), "num");
      cell(row, money(shift.expected_cents), "num expected");
    }, "no checkpoint has a drawer yet", 7);
    var list = $("shift-checkpoints");
    list.textContent = "";
    open.forEach(function (shift) {
      var option = document.createElement("option");
      option.value = shift.checkpoint_id;
      list.appendChild(option);
    });
  }

  function shiftsFailed(error) {
    if (tokenRefused(error)) { return; }
    shiftMessage("could not load the shifts (" + error.message + ")");
  }

  function loadShifts() {
    return api("/api/reports/shifts").then(renderShifts).catch(shiftsFailed);
  }

  function renderClose(closed) {
    $("shift-result").classList.remove("hidden");
    $("shift-result-shift").textContent = closed.checkpoint_id + ", shift " + closed.shift_no;
    $("shift-result-expected").textContent = money(closed.expected_cents);
    $("shift-result-counted").textContent = money(closed.counted_cents);
    var variance = closed.variance_cents;
    $("shift-result-variance").textContent = money(variance) + " (" +
      (variance === 0 ? "exact" : (variance > 0 ? "over" : "short")) + ")";
    $("shift-result").setAttribute("data-variance-cents", String(variance));
  }

  function closeShift() {
    shiftMessage("");
    $("shift-result").classList.add("hidden");
    var checkpoint = $("shift-checkpoint").value.trim();
    var counted = parseHundredths($("shift-counted").value.trim(), COUNTED_AMOUNT);
    if (!checkpoint) { shiftMessage("name the checkpoint whose drawer was counted"); return; }
    if (counted === null) {
      shiftMessage("the counted amount is a number of " + (currency || "units") +
        " like 49.90 (two decimals at most)");
      return;
    }
    $("shift-close").disabled = true;
    apiCall("/api/shifts/close", "POST", { checkpoint_id: checkpoint, counted_cents: counted })
      .then(function (answer) {
        $("shift-close").disabled = false;
        if (answer.status !== 200) {
          var body = answer.body || {};
          shiftMessage(body.error || ("the close failed (" + answer.status + ")"));
          return;
        }
        renderClose(answer.body);
        shiftMessage("shift " + answer.body.shift_no + " of " + answer.body.checkpoint_id +
          " closed; shift " + (answer.body.shift_no + 1) + " started", "ok");
        $("shift-counted").value = "";
        return loadShifts();
      })
      .catch(function (error) {
        $("shift-close").disabled = false;
        shiftsFailed(error);
      });
  }

  function start() {
    $("card-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var uid = $("card-uid").value.trim().toUpperCase();
      if (!CARD_UID.test(uid)) {
        cardMessage("a card UID is 8, 14 or 20 hexadecimal digits");
        return;
      }
      lookUpCard(uid);
    });
    $("menu-load").addEventListener("click", loadMenu);
    $("menu-add-row").addEventListener("click", function () { addRow({}); });
    $("menu-form").addEventListener("submit", function (event) {
      event.preventDefault();
      saveMenu(false);
    });
    $("menu-clear").addEventListener("click", function () { saveMenu(true); });
    $("card-block").addEventListener("click", function () { changeCard("block"); });
    $("card-unblock").addEventListener("click", function () { changeCard("unblock"); });
    $("shift-form").addEventListener("submit", function (event) {
      event.preventDefault();
      closeShift();
    });
    $("login-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var value = $("token").value.trim();
      if (!value) { return; }
      window.sessionStorage.setItem(TOKEN_KEY, value);
      $("token").value = "";
      lastLedgerCheck = 0;
      lastReports = 0;
      refresh();
    });
    $("logout").addEventListener("click", function () {
      window.clearTimeout(refreshTimer);
      window.sessionStorage.removeItem(TOKEN_KEY);
      $("card-result").classList.add("hidden");
      shownCard = null;
      showLogin("");
    });
    showMenu(null);
    if (token()) { refresh(); } else { showLogin(""); }
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); }
  else { start(); }
}());
