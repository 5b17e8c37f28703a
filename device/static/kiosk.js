// The kiosk's touchscreen page. It holds only the cart being built; everything else (prices,
// the order's state, outcomes) comes from the kiosk's local API (docs/kiosk.md). Money is
// integer cents throughout; the only conversion is for display and for typed amounts.
"use strict";

(function () {
  const POLL_MS = 300;
  const MAX_QUANTITY = 99;  // per line, as the kiosk's API allows
  const state = { view: null, version: -1, menu: null, cart: new Map(), returns: new Map(), method: "cash" };
  const $ = (id) => document.getElementById(id);

  function money(cents) {
    const negative = cents < 0;
    const absolute = Math.abs(cents);
    const whole = Math.floor(absolute / 100);
    const fraction = String(absolute % 100).padStart(2, "0");
    const currency = state.view ? state.view.currency : "";
    return (negative ? "-" : "") + whole + "." + fraction + (currency ? " " + currency : "");
  }

  // "12", "12.5", "12,50" -> 1250; anything else -> null. No floating point involved.
  function parseCents(text) {
    const match = /^\s*(\d{1,7})(?:[.,](\d{1,2}))?\s*$/.exec(text);
    if (!match) return null;
    const fraction = (match[2] || "").padEnd(2, "0");
    return parseInt(match[1], 10) * 100 + parseInt(fraction, 10);
  }

  async function api(method, path, body) {
    const options = { method, headers: {} };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    let document = null;
    try { document = await response.json(); } catch (error) { document = null; }
    return { ok: response.ok, status: response.status, document };
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function show(id, visible) { $(id).hidden = !visible; }

  // The error line ``id`` after an API call: hidden when it succeeded, else the kiosk's reason.
  function showError(id, reply) {
    const error = $(id);
    if (reply.ok) { error.hidden = true; return; }
    error.textContent = (reply.document && (reply.document.error || reply.document.message)) || "refused";
    error.hidden = false;
  }

  // --- bar: the cart -------------------------------------------------------------------------

  function cartLines() {
    const lines = [];
    if (!state.menu) return lines;
    const deposits = new Map();
    for (const [sku, quantity] of state.cart) {
      const product = state.menu.products.find((p) => p.sku === sku);
      if (!product) continue;
      lines.push({ kind: "item", sku, name: product.name, quantity, cents: quantity * product.unit_price_cents });
      if (product.deposit_sku) deposits.set(product.deposit_sku, (deposits.get(product.deposit_sku) || 0) + quantity);
    }
    for (const [sku, quantity] of deposits) {
      const deposit = state.menu.deposits.find((d) => d.sku === sku);
      if (deposit) lines.push({ kind: "deposit", sku, name: deposit.name, quantity, cents: quantity * deposit.unit_price_cents });
    }
    for (const [sku, quantity] of state.returns) {
      const deposit = state.menu.deposits.find((d) => d.sku === sku);
      if (deposit) lines.push({ kind: "return", sku, name: deposit.return_name, quantity, cents: -quantity * deposit.unit_price_cents });
    }
    return lines;
  }

  function renderCart() {
    const list = $("cart-lines");
    list.replaceChildren();
    let total = 0;
    for (const line of cartLines()) {
      total += line.cents;
      const item = element("li");
      item.dataset.sku = line.sku;
      item.dataset.kind = line.kind;
      item.append(element("span", "", line.quantity + " x " + line.name), element("span", "money", money(line.cents)));
      if (line.kind === "deposit") {
        item.append(element("span"));  // deposits follow their products
      } else {
        const remove = element("button", "line-remove", "\u2212");
        remove.type = "button";
        remove.setAttribute("aria-label", "one less");
        remove.addEventListener("click", () => change(line.kind === "return" ? state.returns : state.cart, line.sku, -1));
        item.append(remove);
      }
      list.append(item);
    }
    $("total").textContent = money(total);
    $("charge").disabled = state.cart.size === 0 && state.returns.size === 0;
    for (const button of $("returns").querySelectorAll("button[data-return-sku]")) {
      button.disabled = !canReturnOneMore(button.dataset.returnSku);
    }
  }

  // Cup returns credited by one order, in cents (the kiosk and the cloud refuse more).
  function returnsCents(returns) {
    let cents = 0;
    if (!state.menu) return cents;
    for (const [sku, quantity] of returns) {
      const deposit = state.menu.deposits.find((d) => d.sku === sku);
      if (deposit) cents += quantity * deposit.unit_price_cents;
    }
    return cents;
  }

  function returnLimitCents() {
    const limit = state.menu ? state.menu.return_cents_max : undefined;
    return typeof limit === "number" ? limit : Infinity;
  }

  function canReturnOneMore(sku) {
    const trial = new Map(state.returns);
    trial.set(sku, (trial.get(sku) || 0) + 1);
    return returnsCents(trial) <= returnLimitCents() && trial.get(sku) <= MAX_QUANTITY;
  }

  function change(map, sku, delta) {
    const error = $("order-error");
    if (map === state.returns && delta > 0 && !canReturnOneMore(sku)) {
      error.textContent = "Returns of one order: at most " + money(returnLimitCents());
      error.hidden = false;
      return;
    }
    const quantity = (map.get(sku) || 0) + delta;
    if (quantity <= 0) map.delete(sku); else map.set(sku, Math.min(quantity, MAX_QUANTITY));
    error.hidden = true;
    renderCart();
  }

  function renderMenu() {
    $("menu-title").textContent = state.menu.title;
    const products = $("products");
    products.replaceChildren();
    for (const product of state.menu.products) {
      const button = element("button", "button button-product" + (product.is_deposit ? " button-deposit" : ""));
      button.type = "button";
      button.dataset.sku = product.sku;
      button.append(element("span", "", product.name), element("span", "price money", money(product.unit_price_cents)));
      button.addEventListener("click", () => change(state.cart, product.sku, 1));
      products.append(button);
    }
    const limit = returnLimitCents();
    $("returns-limit").textContent = limit === Infinity ? "" : "At most " + money(limit) + " per order";
    const returns = $("returns");
    returns.replaceChildren();
    for (const deposit of state.menu.deposits) {
      const button = element("button", "button button-product button-return");
      button.type = "button";
      button.dataset.returnSku = deposit.sku;
      button.append(element("span", "", deposit.return_name), element("span", "price money", money(-deposit.unit_price_cents)));
      button.addEventListener("click", () => change(state.returns, deposit.sku, 1));
      returns.append(button);
    }
    renderCart();
  }

  async function charge() {
    const body = {
      items: [...state.cart].map(([sku, quantity]) => ({ sku, quantity })),
      returns: [...state.returns].map(([sku, quantity]) => ({ sku, quantity })),
      // The menu these prices came from: the kiosk refuses the order if it sells from another.
      menu_tag: state.menu ? state.menu.tag : null,
    };
    const reply = await api("POST", "/api/order", body);
    showError("order-error", reply);
    if (reply.ok) {
      state.cart.clear();
      state.returns.clear();
      renderCart();
      show("menu-changed", false);
    } else if (reply.status === 409) {
      await loadMenu();  // "the menu changed": show the new one
    }
    await poll();
  }

  // --- the menu: the kiosk's latest config's, or its local file's --------------------------------

  async function loadMenu() {
    const reply = await api("GET", "/api/menu");
    if (!reply.ok || !reply.document) return;
    const previous = state.menu;
    state.menu = reply.document;
    if (previous && previous.tag !== state.menu.tag) menuChanged();
    renderMenu();
  }

  // A new menu while an order is being built: never reprice it silently. Lines whose product is
  // gone are dropped and named; the rest show the new prices, and the banner says so.
  function menuChanged() {
    const dropped = [];
    for (const sku of [...state.cart.keys()]) {
      if (!state.menu.products.some((p) => p.sku === sku)) { state.cart.delete(sku); dropped.push(sku); }
    }
    for (const sku of [...state.returns.keys()]) {
      if (!state.menu.deposits.some((d) => d.sku === sku)) { state.returns.delete(sku); dropped.push(sku); }
    }
    const building = state.cart.size > 0 || state.returns.size > 0 || dropped.length > 0;
    let text = building
      ? "The menu changed: the order now shows the new prices. Check it with the customer."
      : "The menu changed.";
    if (dropped.length > 0) text += " No longer on the menu: " + dropped.join(", ") + ".";
    $("menu-changed").textContent = text;
    show("menu-changed", true);
  }

  // --- checkpoint ------------------------------------------------------------------------------

  function renderPresets() {
    const presets = $("presets");
    presets.replaceChildren();
    for (const cents of [1000, 2000, 5000, 10000]) {
      const button = element("button", "button", money(cents));
      button.type = "button";
      button.dataset.cents = String(cents);
      button.addEventListener("click", () => { $("amount").value = (cents / 100).toFixed(0); });
      presets.append(button);
    }
  }

  function chooseMethod(method) {
    state.method = method;
    for (const id of ["method-cash", "method-card"]) {
      $(id).classList.toggle("is-selected", $(id).dataset.method === method);
    }
  }

  async function recharge() {
    const error = $("recharge-error");
    const amount = parseCents($("amount").value);
    const staff = $("staff-id").value.trim() || activeStaff();
    if (amount === null || amount < 1) { error.textContent = "Enter an amount such as 20 or 12.50"; error.hidden = false; return; }
    if (!staff) { error.textContent = "Enter your staff id"; error.hidden = false; return; }
    const reply = await api("POST", "/api/recharge", { amount_cents: amount, payment_method: state.method, staff_id: staff });
    showError("recharge-error", reply);
    if (reply.ok) $("amount").value = "";
    await poll();
  }

  // --- (1.1) at the counter: cancel a recent order (void), replace a wristband (card swap) ------

  function cancellable(order, now) {
    return order.void === null && now < order.cancellable_until_ms;
  }

  // Rebuilt only when the list or what may be cancelled changed (not on every poll: a button
  // being pressed must not be replaced under the finger).
  let recentKey = null;

  function renderRecent(view) {
    const orders = view.orders;
    const recent = orders ? orders.recent : [];
    show("recent", view.mode === "bar" && recent.length > 0);
    const now = Date.now();
    const key = JSON.stringify([view.online, recent.map((o) => [o.request_id, o.void, cancellable(o, now)])]);
    if (key === recentKey) return;
    recentKey = key;
    $("recent-hint").textContent = orders
      ? (view.online ? "Cancel within " + Math.round(orders.void_window_s / 60) + " minutes" : "Offline: orders can be cancelled only online")
      : "";
    const list = $("recent-lines");
    list.replaceChildren();
    for (const order of recent) {
      const item = element("li");
      item.dataset.requestId = order.request_id;
      // card_uid comes masked (****E5F6).
      item.append(element("span", "", "#" + order.seq + " " + order.card_uid + (order.offline ? " (offline sale)" : "")),
        element("span", "money", money(order.amount_cents)));
      if (order.void === "voided") {
        item.append(element("span", "void-state", "cancelled"));
      } else if (order.void === "pending") {
        item.append(element("span", "void-state", "cancelling\u2026"));
      } else if (cancellable(order, now)) {
        const button = element("button", "button button-secondary", "Cancel");
        button.type = "button";
        button.dataset.voidId = order.request_id;
        button.disabled = !view.online;
        button.addEventListener("click", () => voidOrder(order.request_id));
        item.append(button);
      } else {
        item.append(element("span", "void-state", ""));
      }
      list.append(item);
    }
  }

  async function voidOrder(requestId) {
    const error = $("void-error");
    const staff = $("void-staff").value.trim() || activeStaff();
    if (!staff) { error.textContent = "Enter your staff id to cancel an order"; error.hidden = false; return; }
    showError("void-error", await api("POST", "/api/void", { request_id: requestId, staff_id: staff }));
    await poll();
  }

  async function swap() {
    const error = $("swap-error");
    const staff = $("staff-id").value.trim() || activeStaff();
    const old = $("old-uid").value.trim();
    if (!staff) { error.textContent = "Enter your staff id"; error.hidden = false; return; }
    const body = { staff_id: staff };
    if (old) body.old_card_uid = old;
    const reply = await api("POST", "/api/swap", body);
    showError("swap-error", reply);
    if (reply.ok) $("old-uid").value = "";
    await poll();
  }

  // --- (1.1) staff: log in with id, PIN and the staff band; who is at the till; log out ------

  function activeStaff() {
    const staff = state.view && state.view.staff;
    return (staff && staff.active) || "";
  }

  async function staffLogin() {
    const error = $("staff-error");
    const staffId = $("login-staff").value.trim();
    const pin = $("login-pin").value.trim();
    if (!staffId || !/^[0-9]{4,12}$/.test(pin)) {
      error.textContent = "Enter your staff id and your PIN (4 to 12 digits)";
      error.hidden = false;
      return;
    }
    const reply = await api("POST", "/api/staff/login", { staff_id: staffId, pin });
    $("login-pin").value = "";  // the PIN never stays on the page
    showError("staff-error", reply);
    if (reply.ok) { $("login-staff").value = ""; show("staff-login-form", false); }
    await poll();
  }

  async function staffCommand(path, staffId) {
    showError("staff-error", await api("POST", path, { staff_id: staffId }));
    await poll();
  }

  let staffKey = null;

  function renderStaff(view) {
    const staff = view.staff || { active: null, logged_in: [] };
    show("staff", view.screen === "idle");
    const active = staff.active;
    $("staff-active").textContent = active
      ? "At the till: " + active
      : staff.logged_in.length ? "Tap your name: who is at the till?" : "Nobody logged in";
    $("staff-hint").textContent = view.online
      ? "then tap YOUR staff band"
      : "Offline: a staff login cannot be verified (the cloud checks the PIN)";
    $("staff-login").disabled = !view.online;
    for (const id of ["staff-id", "void-staff"]) $(id).placeholder = active || "";
    const key = JSON.stringify([active, staff.logged_in.map((s) => s.staff_id)]);
    if (key === staffKey) return;
    staffKey = key;
    const list = $("staff-list");
    list.replaceChildren();
    for (const session of staff.logged_in) {
      const item = element("li", session.staff_id === active ? "is-active" : "");
      const pick = element("button", "button button-toggle" + (session.staff_id === active ? " is-selected" : ""), session.staff_id);
      pick.type = "button";
      pick.dataset.staffId = session.staff_id;
      pick.title = "logged in with " + session.card_uid + " until " + new Date(session.expires_at_ms).toLocaleTimeString();
      pick.addEventListener("click", () => staffCommand("/api/staff/active", session.staff_id));
      const logout = element("button", "button button-secondary", "Log out");
      logout.type = "button";
      logout.dataset.logoutId = session.staff_id;
      logout.addEventListener("click", () => staffCommand("/api/staff/logout", session.staff_id));
      item.append(pick, logout);
      list.append(item);
    }
  }

  // --- (ours) cash out a wristband at a checkpoint: tap it, then Confirm -------------------------

  async function cashOut() {
    const error = $("cashout-error");
    const staff = $("staff-id").value.trim() || activeStaff();
    if (!staff) { error.textContent = "Log in (or enter your staff id) to cash out"; error.hidden = false; return; }
    showError("cashout-error", await api("POST", "/api/cashout", { staff_id: staff }));
    await poll();
  }

  function orderAmount(order) {
    if (!order) return null;
    if (order.type === "bar_order") return order.total_cents;
    if (order.type === "checkpoint_recharge" || order.type === "void") return order.amount_cents;
    return null;  // a swap, a login or logout, a cash-out (only the cloud knows the balance)
  }

  // --- the kiosk's state -----------------------------------------------------------------------

  function render(view) {
    const screen = view.screen;
    $("screen").dataset.screen = screen;
    $("kiosk-id").textContent = view.kiosk_id;
    $("mode").textContent = view.mode;
    const link = $("link");
    link.textContent = view.online ? "online" : "offline";
    link.className = "pill " + (view.online ? "pill-on" : "pill-off");
    const reader = $("reader");
    const readerOk = view.reader && view.reader.available;
    reader.textContent = view.reader ? "reader " + (readerOk ? "ok" : "unavailable") : "reader ?";
    reader.className = "pill " + (readerOk ? "pill-on" : "pill-off");
    const config = view.config || {};
    const configPill = $("config");
    configPill.textContent = config.version ? "config v" + config.version : "no config";
    configPill.title = "menu: " + (config.menu === "config" ? (config.menu_id || "from the cloud") : config.menu === "file" ? "local file" : "none");
    const denylist = view.denylist || {};
    $("denylist").textContent = denylist.version ? "deny-list v" + denylist.version + " (" + denylist.cards + ")" : "no deny-list";
    const outbox = $("outbox");
    outbox.textContent = "outbox " + view.outbox.pending + "/" + view.outbox.max;
    outbox.className = "pill " + (view.outbox.full ? "pill-off" : view.outbox.pending > 0 ? "pill-warn" : "");
    // (1.1) Offline sales held until the cloud answers them, and their total.
    const offline = view.offline || { pending: 0, pending_cents: 0, active: false };
    const offlinePill = $("offline-sales");
    show("offline-sales", offline.pending > 0 || offline.active);
    offlinePill.textContent = "offline sales " + offline.pending + " (" + money(offline.pending_cents) + ")";
    offlinePill.title = offline.active
      ? (offline.allowed ? "no network: sales are approved offline within the limits" : "no network: this bar cannot sell offline")
      : "waiting for the cloud's answers";
    show("alert", Boolean(view.alert));
    $("alert").textContent = view.alert || "";
    show("notice", Boolean(view.notice) && screen !== "order_pending");
    $("notice").textContent = view.notice || "";

    const building = screen === "idle";
    show("panel-bar", building && view.mode === "bar");
    show("panel-checkpoint", building && view.mode === "checkpoint");
    const waiting = ["order_pending", "card_read", "waiting", "timed_out", "offline"].includes(screen);
    show("panel-tap", waiting);
    show("panel-outcome", screen === "approved" || screen === "declined" || screen === "approved_offline");

    if (waiting) {
      $("tap-title").textContent = view.message;
      const order = view.order;
      const amount = orderAmount(order);
      $("tap-amount").textContent = amount === null ? "" : money(amount);
      const lines = $("tap-lines");
      lines.replaceChildren();
      if (order && order.type === "bar_order") {
        for (const line of order.items) {
          const item = element("li");
          item.append(element("span", "", line.quantity + " x " + line.name), element("span", "money", money(line.line_cents)));
          lines.append(item);
        }
      } else if (order && order.type === "void") {
        const item = element("li");
        item.append(element("span", "", "cancel an order - staff " + order.staff_id));
        lines.append(item);
      } else if (order && (order.type === "staff_login" || order.type === "staff_logout")) {
        const item = element("li");
        item.append(element("span", "", order.type.replace("_", " ") + " - " + order.staff_id));
        lines.append(item);
      } else if (order && order.type === "cash_out") {
        const item = element("li");
        item.append(element("span", "", "cash out " + (order.card_uid || "(tap the band)") + " - staff " + order.staff_id));
        lines.append(item);
      } else if (order && order.type === "card_swap") {
        const item = element("li");
        item.append(element("span", "", "old band " + (order.old_card_uid || "(tap it)") + " - staff " + order.staff_id));
        lines.append(item);
      } else if (order) {
        const item = element("li");
        item.append(element("span", "", order.payment_method + " - staff " + order.staff_id));
        lines.append(item);
      }
      show("cancel", screen === "order_pending");
      show("confirm", screen === "order_pending" && order && order.type === "cash_out" && Boolean(order.card_uid));
      $("cancel").textContent = "Cancel";
      if (screen === "timed_out" || screen === "offline") {
        show("cancel", true);
        $("cancel").textContent = "Next customer";
      }
    }
    if (screen === "approved_offline") {
      // The kiosk approved it itself: the amount, no balance (it does not know one).
      const order = view.order;
      $("outcome-title").textContent = "Approved offline";
      $("outcome-amount").textContent = order ? money(order.total_cents) : "";
      $("outcome-message").textContent = "Stored: it is sent to the cloud when the network is back";
      show("balance-row", false);
    }
    if (screen === "approved" || screen === "declined") {
      show("balance-row", true);
      const outcome = view.outcome;
      const kind = view.order ? view.order.type : null;
      const approved = screen === "approved";
      const titles = {
        void: approved ? "Order cancelled" : "Not cancelled",
        card_swap: approved ? "Wristband replaced" : "Not replaced",
        staff_login: approved ? "Logged in" : "Login refused",
        staff_logout: approved ? "Logged out" : "Logout refused",
        cash_out: approved ? "Cashed out" : "Not cashed out",
      };
      const moneyless = kind === "staff_login" || kind === "staff_logout";
      $("outcome-title").textContent = titles[kind] || (approved ? "Approved" : "Declined");
      let amount = "";
      if (outcome && kind === "cash_out") {
        amount = approved && outcome.previous_balance_cents !== null ? money(outcome.previous_balance_cents) : "";
      } else if (outcome && kind !== "card_swap" && !moneyless) {
        amount = money(outcome.amount_cents);
      }
      $("outcome-amount").textContent = amount;
      $("outcome-message").textContent = (approved && titles[kind]) || kind === "staff_login"
        ? view.message  // "order cancelled, 15.00 back", "anna logged in", the cash to hand out
        : outcome ? outcome.message + (outcome.error_code ? " (" + outcome.error_code + ")" : "") : "";
      // A cash-out's receipt line: the band, who paid out, and the cloud's text (the cash).
      show("receipt", approved && kind === "cash_out" && Boolean(outcome));
      $("receipt").textContent = approved && kind === "cash_out" && outcome
        ? "Receipt: cash-out of " + outcome.card_uid + " by " + view.order.staff_id + ": " + outcome.message
        : "";
      show("balance-row", !moneyless);
      $("new-balance").textContent = outcome && outcome.new_balance_cents !== null ? money(outcome.new_balance_cents) : "-";
    }

    const late = view.late_results || [];
    show("late", late.length > 0);
    const lateLines = $("late-lines");
    lateLines.replaceChildren();
    for (const outcome of late.slice().reverse()) {
      const item = element("li");
      item.append(
        // card_uid comes masked (****E5F6): the screen never shows a whole UID.
        element("span", "", "#" + outcome.seq + " " + outcome.card_uid + " " + outcome.status +
          (outcome.offline ? " (offline sale)" : "") +
          (outcome.debt_cents ? " - debt " + money(outcome.debt_cents) : "")),
        element("span", "money", money(outcome.amount_cents)),
      );
      lateLines.append(item);
    }
    renderRecent(view);
    renderStaff(view);
    show("sim", view.reader && view.reader.name === "sim");
  }

  // One request at a time: two overlapping polls could answer out of order and show an older
  // state after a newer one. A poll asked for meanwhile runs right after the current one.
  let polling = null;
  let pollAgain = false;

  function poll() {
    if (polling) {
      pollAgain = true;
      return polling;
    }
    polling = (async () => {
      do {
        pollAgain = false;
        await pollOnce();
      } while (pollAgain);
      polling = null;
    })();
    return polling;
  }

  async function pollOnce() {
    try {
      const reply = await api("GET", "/api/state");
      if (reply.ok && reply.document && reply.document.version !== state.version) {
        state.view = reply.document;
        state.version = reply.document.version;
        const tag = state.view.config ? state.view.config.menu_tag : null;
        if (state.view.mode === "bar" && (!state.menu || state.menu.tag !== tag)) await loadMenu();
        render(state.view);
      } else if (state.view) {
        renderRecent(state.view);  // "Cancel" disappears when its window ends
      }
    } catch (error) {
      $("link").textContent = "kiosk unreachable";
      $("link").className = "pill pill-off";
    }
  }

  function wire() {
    $("charge").addEventListener("click", charge);
    $("clear").addEventListener("click", () => { state.cart.clear(); state.returns.clear(); show("menu-changed", false); renderCart(); });
    $("menu-changed").addEventListener("click", () => show("menu-changed", false));
    $("cancel").addEventListener("click", async () => {
      const screen = state.view ? state.view.screen : "";
      await api("POST", screen === "order_pending" ? "/api/cancel" : "/api/dismiss", {});
      await poll();
    });
    $("dismiss").addEventListener("click", async () => { await api("POST", "/api/dismiss", {}); await poll(); });
    $("recharge").addEventListener("click", recharge);
    $("swap").addEventListener("click", swap);
    $("cashout").addEventListener("click", cashOut);
    $("confirm").addEventListener("click", async () => { await api("POST", "/api/confirm", {}); await poll(); });
    $("staff-login-open").addEventListener("click", () => show("staff-login-form", $("staff-login-form").hidden));
    $("staff-login").addEventListener("click", staffLogin);
    $("method-cash").addEventListener("click", () => chooseMethod("cash"));
    $("method-card").addEventListener("click", () => chooseMethod("card"));
    $("sim-tap").addEventListener("click", async () => {
      await api("POST", "/api/tap", { card_uid: $("sim-uid").value.trim().toUpperCase() });
      await poll();
    });
    renderPresets();
    poll();
    setInterval(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", wire);
})();
