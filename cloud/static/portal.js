/* The attendee's portal (cloud/api/portal.py). The session is an HttpOnly cookie this script
   never sees; every state-changing request carries the header X-Festival-Portal: 1, which the
   API demands (CSRF). Messages come from one catalogue (/static/portal_messages.json); the
   chosen language is remembered in localStorage. Amounts are integer cents, formatted in the
   deployment's currency with Intl.NumberFormat. */
(function () {
  "use strict";

  var LANGUAGES = ["en", "de", "fr"];
  var LANGUAGE_KEY = "festival-portal-language";
  var LOCALES = { en: "en-GB", de: "de-DE", fr: "fr-FR" };
  var catalogue = {};
  var language = "en";
  var lastCard = null;

  function $(id) { return document.getElementById(id); }
  function show(id, visible) { $(id).classList.toggle("hidden", !visible); }

  function t(key, values) {
    var messages = catalogue[language] || {};
    var text = messages[key] || (catalogue.en || {})[key] || key;
    Object.keys(values || {}).forEach(function (name) {
      text = text.split("{" + name + "}").join(String(values[name]));
    });
    return text;
  }

  function chooseLanguage() {
    var stored = null;
    try { stored = window.localStorage.getItem(LANGUAGE_KEY); } catch (error) { stored = null; }
    if (LANGUAGES.indexOf(stored) >= 0) { return stored; }
    var wanted = (navigator.languages || [navigator.language || "en"]);
    for (var i = 0; i < wanted.length; i += 1) {
      var code = String(wanted[i]).slice(0, 2).toLowerCase();
      if (LANGUAGES.indexOf(code) >= 0) { return code; }
    }
    return "en";
  }

  function applyLanguage(code) {
    language = code;
    document.documentElement.lang = code;
    $("language").value = code;
    Array.prototype.forEach.call(document.querySelectorAll("[data-i18n]"), function (element) {
      element.textContent = t(element.getAttribute("data-i18n"));
    });
    if (lastCard) { renderCard(lastCard); }
  }

  // Cents as the decimal string "12.50" by integer arithmetic; Intl formats it exactly.
  function decimal(cents) {
    var absolute = Math.abs(cents);
    var fraction = String(absolute % 100);
    return (cents < 0 ? "-" : "") + String(Math.floor(absolute / 100)) + "." +
      (fraction.length < 2 ? "0" + fraction : fraction);
  }

  function money(cents, currency, signed) {
    var text;
    try {
      text = new Intl.NumberFormat(LOCALES[language], {
        style: "currency", currency: currency, minimumFractionDigits: 2,
        maximumFractionDigits: 2, signDisplay: signed ? "exceptZero" : "auto"
      }).format(decimal(cents));
    } catch (error) {
      text = (signed && cents > 0 ? "+" : "") + decimal(cents) + " " + currency;
    }
    return text;
  }

  function when(iso) {
    var date = new Date(iso);
    if (isNaN(date.getTime())) { return String(iso); }
    return date.toLocaleString(LOCALES[language], {
      weekday: "short", hour: "2-digit", minute: "2-digit", day: "numeric", month: "short"
    });
  }

  function request(method, path, body) {
    var options = { method: method, credentials: "same-origin", headers: {} };
    if (method !== "GET") { options.headers["X-Festival-Portal"] = "1"; }
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(path, options).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        return { status: response.status, data: data, retryAfter: response.headers.get("Retry-After") };
      });
    });
  }

  // A <span> showing `text`, of class `className` (none when it is empty).
  function span(className, text) {
    var element = document.createElement("span");
    if (className) { element.className = className; }
    element.textContent = text;
    return element;
  }

  // A line of a history list: what happened, its amount (or state), when.
  function historyItem(className, what, amount, at) {
    var item = document.createElement("li");
    item.className = className;
    item.appendChild(what);
    item.appendChild(amount);
    item.appendChild(span("when", when(at)));
    return item;
  }

  function describe(transaction, currency) {
    var key = "kind_" + transaction.kind;
    var what = span("what", t(key) === key ? t("kind_other") : t(key));
    var place = transaction.where === "online" ? t("online") : transaction.where;
    if (place) { what.textContent += " " + t("at_place", { place: place }); }
    if (transaction.payment_method) {
      what.textContent += " (" + t("method_" + transaction.payment_method) + ")";
    }
    var amount = span("amount" + (transaction.amount_cents > 0 ? " credit" : ""),
      money(transaction.amount_cents, currency, true));
    var item = historyItem("transaction", what, amount, transaction.at);
    if (transaction.items && transaction.items.length) {
      item.appendChild(span("items", transaction.items.map(function (line) {
        return line.quantity + " × " + line.name;
      }).join(", ")));
    }
    return item;
  }

  function renderCard(card) {
    lastCard = card;
    $("balance").textContent = money(card.balance_cents, card.currency, false);
    $("debt").textContent = money(card.debt_cents, card.currency, false);
    show("debt-line", card.debt_cents > 0);
    var status = $("status");
    status.textContent = t("status_" + card.status);
    status.className = "status-" + card.status;
    $("shown-uid").textContent = card.card_uid;
    var blocked = card.status === "blocked";
    show("blocked-note", blocked);
    show("block-section", !blocked);
    var list = $("history");
    while (list.firstChild) { list.removeChild(list.firstChild); }
    card.transactions.forEach(function (transaction) {
      list.appendChild(describe(transaction, card.currency));
    });
    show("history-empty", card.transactions.length === 0);
    renderPayouts(card);
  }

  // --- payouts ------------------------------------------------------------------------------

  function payoutUnderWay(card) {
    return (card.payouts || []).some(function (payout) { return payout.state === "pending"; });
  }

  function describePart(part, currency) {
    var line = document.createElement("span");
    line.className = "part";
    var what = span("", t("part_" + part.kind, { end: part.iban_end || "" }) + " · ");
    what.appendChild(span("state-" + part.state, t("state_" + part.state)));
    line.appendChild(what);
    line.appendChild(span("", money(part.amount_cents, currency, false)));
    return line;
  }

  function describePayout(payout, currency) {
    var what = span("what", t("payout_requested", { amount: money(payout.amount_cents, currency, false) }));
    var state = span("amount state-" + payout.state, t("state_" + payout.state));
    var item = historyItem("payout", what, state, payout.requested_at);
    payout.parts.forEach(function (part) { item.appendChild(describePart(part, currency)); });
    return item;
  }

  function renderPayouts(card) {
    var payouts = card.payouts || [];
    var list = $("payouts");
    while (list.firstChild) { list.removeChild(list.firstChild); }
    payouts.forEach(function (payout) { list.appendChild(describePayout(payout, card.currency)); });
    show("payouts-section", payouts.length > 0);
    var offered = card.balance_cents > 0 && card.debt_cents === 0 && !payoutUnderWay(card);
    show("payout-section", offered);
    if (!offered) { show("payout-confirm", false); }
    var fee = card.payout_fee_cents || 0;
    $("payout-fee").textContent = fee > 0 ? t("payout_fee", { amount: money(fee, card.currency, false) }) : "";
    show("payout-fee", fee > 0);
    show("payout-pin-line", Boolean(card.session && card.session.kind === "tap"));
  }

  // "2", "2.5", "2,50" -> 250 cents, by string arithmetic (never through a float); null when
  // it is not an amount.
  function cents(text) {
    var value = String(text).trim();
    if (value === "") { return 0; }
    var match = /^(\d{1,9})(?:[.,](\d{1,2}))?$/.exec(value);
    if (!match) { return null; }
    var fraction = (match[2] || "") + "00";
    return Number(match[1]) * 100 + Number(fraction.slice(0, 2));
  }

  function payoutFailed(answer) {
    var error = String(answer.data.error || "");
    if (answer.status === 400) {
      if (/iban/i.test(error) && /not valid/.test(error)) { return t("payout_error_iban"); }
      if (/bank transfer|account_holder/.test(error)) { return t("payout_error_holder"); }
      if (/donat/.test(error)) { return t("payout_error_donation"); }
      if (/email/.test(error)) { return t("payout_error_email"); }
      return t("payout_error_invalid");
    }
    if (answer.status === 409) {
      return /debt/.test(error) ? t("payout_error_debt") : t("payout_error_refused");
    }
    if (answer.status === 403) { return t("payout_error_pin"); }
    if (answer.status === 429) {
      var minutes = Math.max(1, Math.ceil(Number(answer.retryAfter || 60) / 60));
      return t("error_locked", { minutes: minutes });
    }
    return t("error_network");
  }

  function payoutError(message) {
    $("payout-error").textContent = message || "";
    show("payout-error", Boolean(message));
  }

  function payoutBody() {
    var body = {};
    var donation = cents($("payout-donation").value);
    if (donation === null) { return null; }
    if (donation > 0) { body.donate_cents = donation; }
    [["iban", "payout-iban"], ["account_holder", "payout-holder"], ["email", "payout-email"],
      ["pin", "payout-pin"]].forEach(function (pair) {
      var value = $(pair[1]).value.trim();
      if (value !== "") { body[pair[0]] = value; }
    });
    return body;
  }

  function onPayoutAsk(event) {
    event.preventDefault();
    if (payoutBody() === null) { payoutError(t("payout_error_donation")); return; }
    payoutError("");
    var amount = lastCard ? money(lastCard.balance_cents, lastCard.currency, false) : "";
    $("payout-question").textContent = t("payout_question", { amount: amount });
    show("payout-confirm", true);
    $("payout-confirm").scrollIntoView({ block: "center" });
  }

  function onPayout() {
    var body = payoutBody();
    show("payout-confirm", false);
    if (body === null) { payoutError(t("payout_error_donation")); return; }
    var button = $("payout-yes");
    button.disabled = true;
    request("POST", "/api/portal/payout", body).then(function (answer) {
      button.disabled = false;
      if (answer.status === 401) { showLogin(t("error_session")); return; }
      if (answer.status !== 201) { payoutError(payoutFailed(answer)); return; }
      payoutError("");
      $("payout-pin").value = "";
      loadCard();
    }, function () { button.disabled = false; payoutError(t("error_network")); });
  }

  function showLogin(message) {
    lastCard = null;
    show("loading", false);
    show("account", false);
    show("login", true);
    $("login-error").textContent = message || "";
    show("login-error", Boolean(message));
  }

  function loadCard() {
    return request("GET", "/api/portal/card").then(function (answer) {
      show("loading", false);
      if (answer.status === 401) { showLogin(""); return; }
      if (answer.status !== 200) { showLogin(t("error_network")); return; }
      show("login", false);
      show("account", true);
      renderCard(answer.data);
    }, function () { showLogin(t("error_network")); });
  }

  function loginFailed(answer) {
    if (answer.status === 401) { return t("error_wrong"); }
    if (answer.status === 400) { return t("error_invalid"); }
    if (answer.status === 429 && /wristband/.test(String(answer.data.error))) {
      var minutes = Math.max(1, Math.ceil(Number(answer.retryAfter || 60) / 60));
      return t("error_locked", { minutes: minutes });
    }
    if (answer.status === 429) { return t("error_rate"); }
    return t("error_network");
  }

  function onLogin(event) {
    event.preventDefault();
    var button = $("login-button");
    button.disabled = true;
    request("POST", "/api/portal/login", {
      card_uid: $("card_uid").value, pin: $("pin").value
    }).then(function (answer) {
      button.disabled = false;
      if (answer.status !== 200) { showLogin(loginFailed(answer)); return; }
      $("pin").value = "";
      show("login-error", false);
      loadCard();
    }, function () { button.disabled = false; showLogin(t("error_network")); });
  }

  function onBlock() {
    show("block-confirm", false);
    request("POST", "/api/portal/block").then(function (answer) {
      if (answer.status === 401) { showLogin(t("error_session")); return; }
      if (answer.status !== 200) {
        $("block-error").textContent = t("error_network");
        show("block-error", true);
        return;
      }
      loadCard();
    }, function () {
      $("block-error").textContent = t("error_network");
      show("block-error", true);
    });
  }

  function start() {
    $("language").addEventListener("change", function () {
      var code = $("language").value;
      try { window.localStorage.setItem(LANGUAGE_KEY, code); } catch (error) { /* private mode */ }
      applyLanguage(code);
    });
    $("login-form").addEventListener("submit", onLogin);
    $("block-button").addEventListener("click", function () {
      show("block-confirm", true);
      // On a phone the question would open below the fold: bring it (and its buttons) up.
      $("block-confirm").scrollIntoView({ block: "center" });
    });
    $("block-no").addEventListener("click", function () { show("block-confirm", false); });
    $("block-yes").addEventListener("click", onBlock);
    $("payout-form").addEventListener("submit", onPayoutAsk);
    $("payout-no").addEventListener("click", function () { show("payout-confirm", false); });
    $("payout-yes").addEventListener("click", onPayout);
    $("logout").addEventListener("click", function () {
      request("POST", "/api/portal/logout").then(function () { showLogin(""); });
    });
    fetch("/static/portal_messages.json", { credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (messages) { catalogue = messages; }, function () { catalogue = {}; })
      .then(function () { applyLanguage(chooseLanguage()); return loadCard(); });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
