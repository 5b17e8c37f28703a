-- Revision 0024 (staff and roles): issue 17 section 3; PROTOCOL.md 1.1 `staff_login` /
-- `staff_logout`, STAFF_NOT_ALLOWED; DESIGN.md `staff add|pin|disable|list`,
-- FESTIVAL_STAFF_REQUIRED.
--   * staff_members: who may work at a kiosk - id, name, role (bartender, cashier, supervisor),
--     their own staff band (card_uid) and a slow hash of their PIN (scrypt, made and checked in
--     Python by cloud/staff.py with hashlib's: the database never sees a PIN, not even in a
--     request - the consumer checks a login's PIN against the hash it reads here and passes
--     its verdict, pin_verified, and the hash it checked, pin_hash_checked).
--   * staff_login: approved when band, id and PIN match an enabled staff member who is not
--     locked; five failures in 15 minutes lock that staff member for 15 minutes. A refused login
--     is STAFF_NOT_ALLOWED (rejected) and, when the staff member exists, counts as a failure. The
--     login holds for that kiosk until its staff_logout, 12 hours, a new PIN or `staff disable`
--     (staff_logins). No SUN check: PROTOCOL.md checks bar orders, top-ups and swaps; the PIN is
--     the staff band's second factor.
--   * staff_logout: the band must be the staff member's own; it ends their login at that kiosk.
--   * Both move no money: their outcomes carry no transaction, balances or debt (approved
--     outcomes without a transaction are allowed for these two kinds only). Exactly once by
--     request id like every request: claim, audit, cache and seq in the same transaction.
--   * With p_staff_required (FESTIVAL_STAFF_REQUIRED=true, the consumer's setting) every other
--     kiosk request (source mqtt; the seed-compatible POS endpoints are exempt) must name a
--     staff member whose login holds at the sending kiosk and whose role allows it - bartender:
--     bar orders; cashier: top-ups; supervisor: everything, and only a supervisor voids, swaps or
--     cashes out - else STAFF_NOT_ALLOWED, stored like every rejection (a replay is answered
--     first). An offline sale is judged by the login that held when it was made (the kiosk's
--     clock: from the login's created_at_ms to the logout's, at most 12 hours).
--   * A login's verdict counts only for the hash it was checked against: a `staff pin` between
--     the consumer's read and this transaction makes the old PIN fail.

-- ---------------------------------------------------------------------------------------------
-- 1. Schema

ALTER TABLE processed_requests DROP CONSTRAINT processed_requests_kind_check;
ALTER TABLE processed_requests ADD CONSTRAINT processed_requests_kind_check
    CHECK (kind IN ('bar_order', 'checkpoint_recharge', 'void', 'card_swap', 'cash_out',
                    'staff_login', 'staff_logout'));
-- An approved request has a transaction, except a staff login or logout (they move no money).
ALTER TABLE processed_requests DROP CONSTRAINT processed_requests_check;
ALTER TABLE processed_requests ADD CONSTRAINT processed_requests_check
    CHECK ((status = 'approved') = (transaction_id IS NOT NULL)
           OR (kind IN ('staff_login', 'staff_logout') AND transaction_id IS NULL));

CREATE TABLE staff_members (
    staff_id text PRIMARY KEY
        CHECK (length(staff_id) BETWEEN 1 AND 64 AND staff_id !~ '[[:cntrl:]]'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200 AND name !~ '[[:cntrl:]]'),
    role text NOT NULL CHECK (role IN ('bartender', 'cashier', 'supervisor')),
    -- their own staff band (one staff member per band)
    card_uid ledger_card_uid NOT NULL UNIQUE,
    pin_hash text NOT NULL CHECK (pin_hash LIKE 'scrypt$%' AND length(pin_hash) <= 200),
    enabled boolean NOT NULL DEFAULT true,
    -- five failed logins in 15 minutes lock the staff member until then
    locked_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Failed logins of a staff member (the last 15 minutes count; a success or a new PIN clears them).
CREATE TABLE staff_login_failures (
    staff_id text NOT NULL REFERENCES staff_members (staff_id),
    kiosk_id text NOT NULL,
    failed_at timestamptz NOT NULL
);
CREATE INDEX staff_login_failures_staff_idx ON staff_login_failures (staff_id, failed_at);

-- Who is logged in where: one row per approved staff_login.
CREATE TABLE staff_logins (
    request_id text PRIMARY KEY,       -- the staff_login's
    kiosk_id text NOT NULL,
    staff_id text NOT NULL REFERENCES staff_members (staff_id),
    logged_in_at timestamptz NOT NULL, -- the cloud's clock
    expires_at timestamptz NOT NULL,   -- logged_in_at + 12 hours
    -- the kiosk's clock (created_at_ms of the login, of its end): offline sales are judged by it
    kiosk_from_ms bigint NOT NULL,
    kiosk_until_ms bigint NOT NULL,
    ended_at timestamptz,
    ended_by text CHECK (ended_by IN ('logout', 'login again', 'new pin', 'disabled')),
    CHECK ((ended_at IS NULL) = (ended_by IS NULL)),
    CHECK (kiosk_until_ms >= kiosk_from_ms)
);
-- at most one open login per staff member and kiosk
CREATE UNIQUE INDEX staff_logins_open_idx ON staff_logins (kiosk_id, staff_id)
    WHERE ended_at IS NULL;
CREATE INDEX staff_logins_staff_idx ON staff_logins (staff_id, kiosk_id, kiosk_from_ms);

-- ---------------------------------------------------------------------------------------------
-- 2. Limits, names, roles

CREATE FUNCTION ledger_staff_limit(p_name text) RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    CASE p_name
        -- PROTOCOL.md: a login holds 12 hours (protocol/limits.py STAFF_LOGIN_MAX_S)
        WHEN 'login_s' THEN RETURN 43200;
        -- five failures in 15 minutes lock the staff member for 15 minutes
        WHEN 'failures_max' THEN RETURN 5;
        WHEN 'failure_window_s' THEN RETURN 900;
        WHEN 'lock_s' THEN RETURN 900;
        ELSE
            RAISE EXCEPTION 'unknown staff limit %', p_name
                USING ERRCODE = 'invalid_parameter_value';
    END CASE;
END
$$;

CREATE OR REPLACE FUNCTION ledger_source_function(p_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_type
        WHEN 'bar_order' THEN 'process-bar-order'
        WHEN 'checkpoint_recharge' THEN 'process-checkpoint-recharge'
        WHEN 'void' THEN 'process-void'
        WHEN 'card_swap' THEN 'process-card-swap'
        WHEN 'cash_out' THEN 'process-cash-out'
        WHEN 'staff_login' THEN 'process-staff-login'
        WHEN 'staff_logout' THEN 'process-staff-logout'
    END
$$;

-- DESIGN.md's roles: bartender bar orders; cashier top-ups; supervisor everything (and only a
-- supervisor voids, swaps and cashes out). Logging out is everyone's.
CREATE FUNCTION ledger_staff_role_allows(p_role text, p_type text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_type = 'staff_logout' OR p_role = 'supervisor'
        OR (p_role = 'bartender' AND p_type = 'bar_order')
        OR (p_role = 'cashier' AND p_type = 'checkpoint_recharge')
$$;

-- Why a kiosk's request may not be made by the staff member it names (NULL: it may), when
-- staff roles are enforced. An online request needs a login open now at the sending kiosk; an
-- offline sale, one that held at its created_at_ms (the kiosk's clock).
CREATE FUNCTION ledger_staff_refusal(r ledger_request, p_at timestamptz) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_member staff_members;
BEGIN
    IF r.staff_id IS NULL THEN
        RETURN 'Staff login required: the request names no staff member';
    END IF;
    SELECT * INTO v_member FROM staff_members WHERE staff_id = r.staff_id;
    IF NOT FOUND THEN
        RETURN format('Staff member %s is not registered', left(r.staff_id, 64));
    END IF;
    IF r.type = 'bar_order' AND coalesce(r.offline, false) THEN
        IF NOT EXISTS (SELECT 1 FROM staff_logins l
                        WHERE l.staff_id = r.staff_id AND l.kiosk_id = r.kiosk_id
                          AND l.kiosk_from_ms <= r.created_at_ms
                          AND r.created_at_ms <= l.kiosk_until_ms) THEN
            RETURN format('Staff member %s was not logged in at this kiosk when the sale was made',
                          v_member.staff_id);
        END IF;
    ELSE
        IF NOT v_member.enabled THEN
            RETURN format('Staff member %s is disabled', v_member.staff_id);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM staff_logins l
                        WHERE l.staff_id = r.staff_id AND l.kiosk_id = r.kiosk_id
                          AND l.ended_at IS NULL AND l.expires_at > p_at) THEN
            RETURN format('Staff member %s is not logged in at this kiosk', v_member.staff_id);
        END IF;
    END IF;
    IF NOT ledger_staff_role_allows(v_member.role, r.type) THEN
        RETURN format('A %s may not make a %s', v_member.role, replace(r.type, '_', ' '));
    END IF;
    RETURN NULL;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 3. Writing an outcome that moves no money: ledger_write_requests (the claim, the audit row,
-- the cache, the seq), which now writes no transaction for an approved staff login or logout.

-- revision 0021's, marked (staff)
CREATE OR REPLACE FUNCTION ledger_write_requests(
    p_requests jsonb, p_decided ledger_decided[],
    p_card_uids text[], p_card_balances bigint[], p_card_debts bigint[],
    p_cards_changed boolean[], p_deposit_account_id bigint, p_deposit_balance_cents bigint,
    p_at timestamptz)
RETURNS jsonb
LANGUAGE plpgsql
-- One plan per session, as ledger_process_requests (see revision 0005).
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_claimed bigint;
    v_new_count bigint;
    v_bad_totals bigint;
    v_kiosks text[];
    v_seqs bigint[];
    v_outcomes jsonb;
BEGIN
    WITH input AS (
        SELECT x.*, o.flag, o.outcome, o.deposit_delta_cents, o.debt_delta_cents,
               x.ordinality AS position,
               ledger_source_function(x.type) AS edge
          FROM jsonb_populate_recordset(NULL::ledger_request, p_requests) WITH ORDINALITY AS x
          JOIN unnest(p_decided) WITH ORDINALITY AS o ON o.ordinality = x.ordinality
    ), fresh AS (
        SELECT * FROM input WHERE flag = 'new'
    ), approved AS (
        SELECT f.*, (f.outcome ->> 'transaction_id')::uuid AS transaction_id,
               (f.outcome ->> 'new_balance_cents')::bigint AS new_balance_cents,
               (f.outcome ->> 'new_balance_cents')::bigint
               - (f.outcome ->> 'previous_balance_cents')::bigint AS delta_cents,
               ledger_counter_account(f.type, f.kiosk_id, f.payment_method, f.checkpoint_id)
                   AS counter_account,
               -- 0021: what the festival's loss account pays of a bar order: total + card delta
               -- - debt delta (0 for every sale the card or its debt paid; the total for an
               -- offline sale whose SUN failed)
               CASE WHEN f.type = 'bar_order'
                    THEN f.total_cents + (f.outcome ->> 'new_balance_cents')::bigint
                         - (f.outcome ->> 'previous_balance_cents')::bigint
                         - coalesce(f.debt_delta_cents, 0)
                    ELSE 0 END AS loss_cents
          FROM fresh f WHERE f.outcome ->> 'status' = 'approved'
    ), claims AS (
        INSERT INTO processed_requests (
            request_id, payload_sha256, kiosk_id, source, kind, status, error_code,
            transaction_id, outcome, created_at)
        SELECT f.request_id, decode(f.payload_sha256, 'hex'), f.kiosk_id, f.source, f.type,
               f.outcome ->> 'status', f.outcome ->> 'error_code',
               (f.outcome ->> 'transaction_id')::uuid, f.outcome, p_at
          FROM fresh f
        ON CONFLICT (request_id) DO NOTHING
        RETURNING 1
    ), balances AS (
        -- 0016: a card swap's old card is blocked, replaced by the new one
        UPDATE cards k SET balance_cents = u.balance_cents, debt_cents = u.debt_cents,
                           status = CASE WHEN w.card_uid IS NULL THEN k.status
                                         ELSE 'blocked' END,
                           blocked_reason = CASE WHEN w.card_uid IS NULL THEN k.blocked_reason
                                                 ELSE 'replaced by ' || w.card_uid END,
                           replaced_by = coalesce(w.card_uid, k.replaced_by),
                           updated_at = p_at
          FROM unnest(p_card_uids, p_card_balances, p_card_debts, p_cards_changed)
               AS u(card_uid, balance_cents, debt_cents, changed)
          LEFT JOIN approved w ON w.type = 'card_swap' AND w.old_card_uid = u.card_uid
         WHERE u.changed AND k.card_uid = u.card_uid
        RETURNING 1
    ), deposit AS (
        -- 0005: the deposit account's cache, in the same transaction as its postings
        UPDATE deposit_balances d SET balance_cents = p_deposit_balance_cents, updated_at = p_at
         WHERE p_deposit_balance_cents IS NOT NULL AND d.account_id = p_deposit_account_id
        RETURNING 1
    ), ledger_transactions AS (
        INSERT INTO transactions (transaction_id, kind, request_id, created_at)
        SELECT a.transaction_id, a.type, a.request_id, p_at FROM approved a
         -- (staff) a staff login or logout is approved without a transaction: it moves no money
         WHERE a.transaction_id IS NOT NULL
        RETURNING 1
    ), ledger_postings AS (
        -- 0013: what the card's debt moves goes to its receivable account (receivable:<uid>,
        -- whose postings sum to minus the debt), and the counter account gets the rest, so
        -- every transaction still sums to zero: an offline sale with a shortfall posts the card
        -- (what it paid), its receivable (the shortfall) and the sales account (the total); a
        -- top-up on a card with a debt posts the receivable first, the card the rest.
        INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
        SELECT a.transaction_id, p.account_id, p.amount_cents, p.balance_after_cents
          FROM approved a
          -- 0021: a loss sale on an unknown card has no card (no card posting)
          LEFT JOIN cards c ON c.card_uid = a.card_uid
          JOIN accounts s ON s.name = a.counter_account
          LEFT JOIN accounts d ON a.debt_delta_cents <> 0
                              AND d.name = 'receivable:' || a.card_uid
          LEFT JOIN accounts l ON a.loss_cents <> 0 AND l.name = 'loss:offline'
         -- 0005: the card pays (or gets) the total; the sales account gets the sales lines; the
         -- deposit account the deposits minus the returns. A plain order posts exactly as in
         -- 0002 (card and sales, always); an order with deposit lines skips a zero posting.
         CROSS JOIN LATERAL (VALUES
              (c.account_id, a.delta_cents, a.new_balance_cents, true),
              (s.account_id,
               -a.delta_cents + coalesce(a.debt_delta_cents, 0) + a.loss_cents
               - coalesce(a.deposit_delta_cents, 0), NULL::bigint,
               a.deposit_delta_cents IS NULL),
              (p_deposit_account_id, a.deposit_delta_cents, NULL::bigint, false),
              (d.account_id, -a.debt_delta_cents, NULL::bigint, false),
              -- 0021: the loss account (kind loss, the same sign as loss:disputes)
              (l.account_id, -a.loss_cents, NULL::bigint, false))
              AS p(account_id, amount_cents, balance_after_cents, always)
         WHERE (p.always OR p.amount_cents <> 0) AND p.account_id IS NOT NULL
           AND a.type IN ('bar_order', 'checkpoint_recharge')
        UNION ALL
        -- 0016: a void's or a card swap's postings, as its decide step made them
        SELECT a.transaction_id, (p ->> 'account_id')::bigint, (p ->> 'amount_cents')::bigint,
               (p ->> 'balance_after_cents')::bigint
          FROM approved a
         CROSS JOIN LATERAL jsonb_array_elements(a.decided -> 'postings') AS p
         WHERE a.type IN ('void', 'card_swap')
        RETURNING 1
    ), voided AS (
        -- 0016: an order is voided once (the primary key)
        INSERT INTO voids (
            original_request_id, request_id, order_id, transaction_id, kiosk_id, card_uid,
            credited_card_uid, amount_cents, debt_paid_cents, deposit_cents, staff_id, created_at)
        SELECT a.original_request_id, a.request_id, (a.decided -> 'void' ->> 'order_id')::uuid,
               a.transaction_id, a.kiosk_id, a.card_uid,
               a.decided -> 'void' ->> 'credited_card_uid',
               (a.decided -> 'void' ->> 'amount_cents')::bigint,
               (a.decided -> 'void' ->> 'debt_paid_cents')::bigint,
               (a.decided -> 'void' ->> 'deposit_cents')::bigint, a.staff_id, p_at
          FROM approved a WHERE a.type = 'void'
        RETURNING 1
    ), swapped AS (
        -- 0016: a card is replaced once (old_card_uid is unique)
        INSERT INTO card_swaps (
            request_id, old_card_uid, new_card_uid, transaction_id, kiosk_id, staff_id,
            presence, balance_cents, debt_cents, created_at)
        SELECT a.request_id, a.old_card_uid, a.card_uid, a.transaction_id, a.kiosk_id,
               a.staff_id, a.decided -> 'swap' ->> 'presence',
               (a.decided -> 'swap' ->> 'balance_cents')::bigint,
               (a.decided -> 'swap' ->> 'debt_cents')::bigint, p_at
          FROM approved a WHERE a.type = 'card_swap'
        RETURNING 1
    ), moved_topups AS (
        -- 0016: the old card's credited Stripe top-ups follow the new card, so their refunds,
        -- disputes and a payout's Stripe parts reach the card that holds the money (a top-up
        -- still pending stays: if it is paid, the blocked old card declines it and it is refunded)
        UPDATE topups u SET card_uid = a.card_uid, updated_at = p_at
          FROM approved a
         WHERE a.type = 'card_swap' AND u.card_uid = a.old_card_uid AND u.status = 'credited'
        RETURNING 1
    ), offline AS (
        -- 0013: every approved offline sale, with what the card could not pay (the 24-hour
        -- bound, monitoring)
        INSERT INTO offline_sales (
            request_id, kiosk_id, card_uid, config_version, total_cents, shortfall_cents,
            applied_at, loss_cents)
        SELECT a.request_id, a.kiosk_id, a.card_uid, a.config_version::integer, a.total_cents,
               greatest(coalesce(a.debt_delta_cents, 0), 0), p_at,
               -- 0021: what the loss account paid
               a.loss_cents
          FROM approved a WHERE a.type = 'bar_order' AND coalesce(a.offline, false)
        RETURNING 1
    ), cited_items AS MATERIALIZED (
        -- 0011: the menu lines of each config an approved order cites, read once per config by
        -- its key (as the price check), then looked up in memory for every line
        SELECT i.kiosk_id, i.version, i.sku, i.vat_rate_bp, i.category
          FROM (SELECT DISTINCT a.kiosk_id, a.config_version FROM approved a
                 WHERE a.type = 'bar_order' AND a.source = 'mqtt'
                   AND a.config_version IS NOT NULL) c
         CROSS JOIN LATERAL (
               SELECT * FROM kiosk_config_items i
                WHERE i.kiosk_id = c.kiosk_id AND i.version = c.config_version
               OFFSET 0) i
    ), orders AS (
        INSERT INTO bar_orders (
            order_id, transaction_id, client_request_id, card_id, kiosk_id, staff_id,
            total_cents, source, created_at, created_at_ms)
        SELECT (a.outcome ->> 'order_id')::uuid, a.transaction_id, a.request_id, a.card_uid,
               a.kiosk_id, a.staff_id, a.total_cents, a.source, p_at,
               -- 0016: the kiosk's clock at the tap (the void window starts there)
               a.created_at_ms
          FROM approved a WHERE a.type = 'bar_order'
        RETURNING 1
    ), order_lines AS (
        INSERT INTO bar_order_items (
            order_id, line_no, name, sku, quantity, unit_price_cents, is_deposit, is_return,
            line_total_cents, vat_rate_bp, category)
        SELECT (a.outcome ->> 'order_id')::uuid, i.line_no, i.name, i.sku, i.quantity,
               i.unit_price_cents, coalesce(i.is_deposit, false), coalesce(i.is_return, false),
               CASE WHEN coalesce(i.is_return, false) THEN -1 ELSE 1 END
               * i.quantity * i.unit_price_cents,
               -- 0011: the VAT rate and category of the menu line it was sold from (the check
               -- found every line of an approved order on its menu; no menu: NULL)
               m.vat_rate_bp, m.category
          FROM approved a
         CROSS JOIN LATERAL ROWS FROM (
              jsonb_to_recordset(a.items) AS (
                  name text, sku text, quantity integer, unit_price_cents bigint,
                  is_deposit boolean, is_return boolean))
              WITH ORDINALITY AS i(
                  name, sku, quantity, unit_price_cents, is_deposit, is_return, line_no)
          LEFT JOIN cited_items m
                 ON a.source = 'mqtt' AND m.kiosk_id = a.kiosk_id
                AND m.version = a.config_version AND m.sku = i.sku
         WHERE a.type = 'bar_order'
        RETURNING order_id, line_total_cents
    ), checkpoint_topups AS (
        INSERT INTO recharges (
            recharge_id, transaction_id, card_id, amount_cents, payment_method,
            client_request_id, staff_id, checkpoint_id, kiosk_id, source, created_at)
        SELECT ledger_uuid7(), a.transaction_id, a.card_uid, a.amount_cents, a.payment_method,
               a.request_id, a.staff_id, coalesce(a.checkpoint_id, a.kiosk_id), a.kiosk_id,
               a.source, p_at
          FROM approved a WHERE a.type = 'checkpoint_recharge'
        RETURNING 1
    ), audit AS (
        SELECT ledger_log_entries(array_agg(ROW(
                   p_at, i.type,
                   CASE i.flag WHEN 'replayed' THEN 'replayed' ELSE i.outcome ->> 'status' END,
                   i.edge, i.card_uid, coalesce(i.total_cents, i.amount_cents),
                   (i.outcome ->> 'previous_balance_cents')::bigint,
                   (i.outcome ->> 'new_balance_cents')::bigint, i.outcome ->> 'error_code',
                   jsonb_build_object('source', i.source, 'seq', i.seq,
                                      'replayed', i.flag = 'replayed'),
                   i.request_id,
                   CASE WHEN i.flag = 'new' THEN (i.outcome ->> 'transaction_id')::uuid END,
                   i.kiosk_id, i.trace_id)::ledger_log_entry ORDER BY i.position)) AS done
          FROM input i
    ), cache AS (
        SELECT ledger_cache_outcomes(
                   array_agg(ROW(f.request_id, f.edge, f.outcome)::ledger_cache_entry
                             ORDER BY f.position),
                   p_at) AS done
          FROM fresh f
    )
    SELECT (SELECT count(*) FROM claims), (SELECT count(*) FROM fresh),
           -- The items must add up to what the card was charged (checked in Python and here).
           (SELECT count(*)
              FROM approved a
              LEFT JOIN (SELECT l.order_id, sum(l.line_total_cents) AS total_cents
                           FROM order_lines l GROUP BY l.order_id) l
                     ON l.order_id = (a.outcome ->> 'order_id')::uuid
             WHERE a.type = 'bar_order' AND coalesce(l.total_cents, 0) <> a.total_cents),
           seqs.kiosk_ids, seqs.seqs,
           (SELECT jsonb_agg(i.outcome ORDER BY i.position) FROM input i)
      INTO v_claimed, v_new_count, v_bad_totals, v_kiosks, v_seqs, v_outcomes
      FROM (SELECT array_agg(f.kiosk_id ORDER BY f.position) AS kiosk_ids,
                   array_agg(f.seq ORDER BY f.position) AS seqs
              FROM fresh f WHERE f.source = 'mqtt' AND f.seq IS NOT NULL) seqs
      -- one row each: read here, so that they run
      CROSS JOIN audit CROSS JOIN cache
      CROSS JOIN (SELECT count(*) FROM offline) offline_written
      CROSS JOIN (SELECT count(*) FROM voided) voids_written
      CROSS JOIN (SELECT count(*) FROM swapped) swaps_written;

    IF v_claimed <> v_new_count THEN
        RAISE EXCEPTION 'a request_id of this batch was claimed by a concurrent transaction; retry'
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF v_bad_totals > 0 THEN
        RAISE EXCEPTION 'a bar order''s total_cents is not the sum of its items'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Seq tracking, last: kiosk rows come after cards and claims in the lock order.
    IF cardinality(v_kiosks) > 0 THEN
        PERFORM ledger_track_seqs(v_kiosks, v_seqs, p_at);
    END IF;

    RETURN coalesce(v_outcomes, '[]');
END
$$;

-- one staff request's outcome (flag: new, replayed or conflict, as ledger_decided's)

CREATE FUNCTION ledger_write_moneyless(
    r ledger_request, p_flag text, p_outcome jsonb, p_at timestamptz)
RETURNS jsonb
LANGUAGE sql AS $$
    SELECT ledger_write_requests(
        jsonb_build_array(to_jsonb(r)), ARRAY[ROW(p_flag, p_outcome, NULL, 0)::ledger_decided],
        '{}', '{}', '{}', '{}', NULL, NULL, p_at) -> 0
$$;

-- ---------------------------------------------------------------------------------------------
-- 4. staff_login and staff_logout

CREATE FUNCTION ledger_process_staff_request(p_request jsonb, p_staff_required boolean)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    r ledger_request := jsonb_populate_record(NULL::ledger_request, p_request - 'decided');
    -- the consumer's verdict on a login's PIN, and the hash it checked it against
    v_pin_verified boolean := (p_request ->> 'pin_verified')::boolean;
    v_pin_hash text := p_request ->> 'pin_hash_checked';
    v_claim processed_requests;
    v_member staff_members;
    v_failures integer;
    v_code text;
    v_message text;
BEGIN
    IF r.type IS NULL OR r.type NOT IN ('staff_login', 'staff_logout') OR r.request_id IS NULL
       OR r.card_uid IS NULL OR r.staff_id IS NULL OR r.kiosk_id IS NULL
       OR r.created_at_ms IS NULL OR r.source IS DISTINCT FROM 'mqtt'
       OR NOT coalesce(r.payload_sha256 ~ '^[0-9a-fA-F]{64}$', false)
       OR (r.type = 'staff_login' AND v_pin_verified IS NULL)
       -- the PIN never reaches the database (cloud/ledger_records.py request_document)
       OR p_request ? 'pin' THEN
        RAISE EXCEPTION 'malformed staff request % (an MQTT kiosk''s request_id, card_uid, staff_id, created_at_ms, a hex payload_sha256, a login''s pin_verified and no PIN are required)',
            left(coalesce(r.request_id, '?'), 64)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 1. The staff member, locked: their logins and failures change one at a time.
    SELECT * INTO v_member FROM staff_members WHERE staff_id = r.staff_id FOR UPDATE;

    -- 2. Seen before: the stored outcome again (no PIN is checked twice), or a conflict.
    SELECT * INTO v_claim FROM processed_requests WHERE request_id = r.request_id;
    IF FOUND THEN
        IF v_claim.payload_sha256 = decode(r.payload_sha256, 'hex') THEN
            RETURN ledger_write_moneyless(r, 'replayed', v_claim.outcome || '{"replayed": true}',
                                          v_started);
        END IF;
        RETURN ledger_write_moneyless(
            r, 'conflict',
            ledger_outcome(r.request_id, 'rejected', 'IDEMPOTENCY_CONFLICT',
                           'Request id already used for a different request', v_started,
                           r.card_uid) || '{"debt_cents": null}',
            v_started);
    END IF;

    -- 3. Decide.
    IF r.type = 'staff_login' THEN
        IF v_member.staff_id IS NULL THEN
            v_code := 'STAFF_NOT_ALLOWED';
            v_message := 'Staff login refused: staff id, band or PIN do not match';
        ELSIF NOT v_member.enabled THEN
            v_code := 'STAFF_NOT_ALLOWED';
            v_message := format('Staff login refused: %s is disabled', v_member.staff_id);
        ELSIF v_member.locked_until > v_started THEN
            v_code := 'STAFF_NOT_ALLOWED';
            v_message := format(
                'Staff login refused: %s is locked after %s failed logins; try again in %s min',
                v_member.staff_id, ledger_staff_limit('failures_max'),
                ceil(extract(epoch FROM v_member.locked_until - v_started) / 60)::integer);
        ELSIF v_member.card_uid <> r.card_uid OR NOT v_pin_verified
              OR v_pin_hash IS DISTINCT FROM v_member.pin_hash THEN
            v_code := 'STAFF_NOT_ALLOWED';
            v_message := 'Staff login refused: staff id, band or PIN do not match';
            INSERT INTO staff_login_failures (staff_id, kiosk_id, failed_at)
            VALUES (v_member.staff_id, r.kiosk_id, v_started);
            DELETE FROM staff_login_failures
             WHERE staff_id = v_member.staff_id
               AND failed_at < v_started - make_interval(
                                   secs => ledger_staff_limit('failure_window_s'));
            SELECT count(*) INTO v_failures FROM staff_login_failures
             WHERE staff_id = v_member.staff_id;
            IF v_failures >= ledger_staff_limit('failures_max') THEN
                UPDATE staff_members
                   SET locked_until = v_started + make_interval(
                                          secs => ledger_staff_limit('lock_s')),
                       updated_at = v_started
                 WHERE staff_id = v_member.staff_id;
                DELETE FROM staff_login_failures WHERE staff_id = v_member.staff_id;
                v_message := format(
                    'Staff login refused: %s is locked for %s min after %s failed logins',
                    v_member.staff_id, ledger_staff_limit('lock_s') / 60,
                    ledger_staff_limit('failures_max'));
            END IF;
        ELSE
            -- approved: a login already open here is replaced by this one
            UPDATE staff_logins SET ended_at = v_started, ended_by = 'login again',
                                    kiosk_until_ms = greatest(kiosk_from_ms,
                                                              least(kiosk_until_ms, r.created_at_ms))
             WHERE kiosk_id = r.kiosk_id AND staff_id = v_member.staff_id AND ended_at IS NULL;
            INSERT INTO staff_logins (request_id, kiosk_id, staff_id, logged_in_at, expires_at,
                                      kiosk_from_ms, kiosk_until_ms)
            VALUES (r.request_id, r.kiosk_id, v_member.staff_id, v_started,
                    v_started + make_interval(secs => ledger_staff_limit('login_s')),
                    r.created_at_ms,
                    r.created_at_ms + 1000::bigint * ledger_staff_limit('login_s'));
            DELETE FROM staff_login_failures WHERE staff_id = v_member.staff_id;
            UPDATE staff_members SET locked_until = NULL WHERE staff_id = v_member.staff_id
               AND locked_until IS NOT NULL;
            v_message := format('Logged in: %s (%s)', v_member.name, v_member.role);
        END IF;
    ELSE
        IF v_member.staff_id IS NULL OR v_member.card_uid <> r.card_uid THEN
            v_code := 'STAFF_NOT_ALLOWED';
            v_message := 'Staff logout refused: not this staff member''s band';
        ELSE
            UPDATE staff_logins SET ended_at = v_started, ended_by = 'logout',
                                    kiosk_until_ms = greatest(kiosk_from_ms,
                                                              least(kiosk_until_ms, r.created_at_ms))
             WHERE kiosk_id = r.kiosk_id AND staff_id = v_member.staff_id AND ended_at IS NULL
               AND expires_at > v_started;
            IF FOUND THEN
                v_message := format('Logged out: %s', v_member.name);
            ELSIF p_staff_required THEN
                v_code := 'STAFF_NOT_ALLOWED';
                v_message := format('Staff member %s is not logged in at this kiosk',
                                    v_member.staff_id);
            ELSE
                v_message := format('%s was not logged in here', v_member.name);
            END IF;
        END IF;
    END IF;

    -- 4. Write: no transaction, no balances, no debt (PROTOCOL.md).
    RETURN ledger_write_moneyless(
        r, 'new',
        ledger_outcome(r.request_id, CASE WHEN v_code IS NULL THEN 'approved' ELSE 'rejected' END,
                       v_code, v_message, v_started, r.card_uid)
        || '{"debt_cents": null}',
        v_started);
END
$$;

-- A kiosk request refused because of its staff member (STAFF_NOT_ALLOWED, rejected), or NULL
-- when its staff member may make it or it was seen before (a replay or a conflict is answered
-- by its own procedure, first).
CREATE FUNCTION ledger_staff_rejection(p_request jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    r ledger_request := jsonb_populate_record(NULL::ledger_request, p_request - 'decided');
    v_refusal text;
BEGIN
    IF r.source IS DISTINCT FROM 'mqtt' OR r.type = 'staff_login'
       OR EXISTS (SELECT 1 FROM processed_requests WHERE request_id = r.request_id) THEN
        RETURN NULL;
    END IF;
    v_refusal := ledger_staff_refusal(r, v_started);
    IF v_refusal IS NULL THEN
        RETURN NULL;
    END IF;
    IF r.type = 'staff_logout' THEN
        RETURN ledger_write_moneyless(
            r, 'new',
            ledger_outcome(r.request_id, 'rejected', 'STAFF_NOT_ALLOWED', v_refusal, v_started,
                           r.card_uid) || '{"debt_cents": null}',
            v_started);
    END IF;
    RETURN ledger_write_requests(
        jsonb_build_array(p_request - 'decided'),
        ARRAY[ROW('new', ledger_outcome(r.request_id, 'rejected', 'STAFF_NOT_ALLOWED', v_refusal,
                                        v_started, r.card_uid) || '{"debt_cents": null}',
                  NULL, 0)::ledger_decided],
        '{}', '{}', '{}', '{}', NULL, NULL, v_started) -> 0;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 5. The batch: revision 0022's, with staff requests and (p_staff_required) the staff rule.

DROP FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer, integer);
DROP FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer);
DROP FUNCTION ledger_process_requests(jsonb, bigint, bigint, bigint, integer, integer);

CREATE FUNCTION ledger_process_requests(
    p_requests jsonb, p_balance_cents_max bigint, p_topup_cents_max bigint,
    p_return_cents_max bigint, p_menu_grace_s integer,
    p_void_window_s integer DEFAULT ledger_limit('void_window_s'),
    p_staff_required boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_outcomes jsonb := '[]';
    v_run jsonb := '[]';
    v_request jsonb;
    v_rejected jsonb;
BEGIN
    IF jsonb_typeof(p_requests) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_requests must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_void_window_s IS NULL OR p_void_window_s < 0 OR p_staff_required IS NULL THEN
        RAISE EXCEPTION 'invalid limits' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A late offline sale made on a band that has been replaced since follows its replacement
    -- (PROTOCOL.md `card_swap`): it is applied to the card that holds the money now. (The result
    -- still echoes the request's card_uid: the consumer answers with the request's fields.)
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_requests) x
                 JOIN cards c ON c.card_uid = x ->> 'card_uid'
                WHERE x ->> 'type' = 'bar_order' AND x ->> 'offline' = 'true'
                  AND c.replaced_by IS NOT NULL) THEN
        SELECT jsonb_agg(CASE WHEN e.x ->> 'type' = 'bar_order' AND e.x ->> 'offline' = 'true'
                              THEN e.x || jsonb_build_object(
                                  'card_uid', ledger_replacement_of(e.x ->> 'card_uid'))
                              ELSE e.x END ORDER BY e.position)
          INTO p_requests
          FROM jsonb_array_elements(p_requests) WITH ORDINALITY AS e(x, position);
    END IF;
    -- A batch without counter or staff requests, staff roles not enforced (nearly every one),
    -- goes through unchanged.
    IF NOT p_staff_required AND NOT EXISTS (
           SELECT 1 FROM jsonb_array_elements(p_requests) x
            WHERE x ->> 'type' IN ('void', 'card_swap', 'cash_out', 'staff_login',
                                   'staff_logout')) THEN
        RETURN ledger_process_plain_requests(
            p_requests, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
            p_menu_grace_s);
    END IF;
    FOR v_request IN SELECT x.value FROM jsonb_array_elements(p_requests) WITH ORDINALITY x
                      ORDER BY x.ordinality LOOP
        -- (staff) the staff rule comes before every rule of the ledger (PROTOCOL.md's order)
        v_rejected := NULL;
        IF p_staff_required THEN
            IF jsonb_array_length(v_run) > 0
               AND v_request ->> 'request_id' IN (
                   SELECT x ->> 'request_id' FROM jsonb_array_elements(v_run) x) THEN
                -- a request_id repeated in this batch: its first occurrence is written first
                v_outcomes := v_outcomes || ledger_process_plain_requests(
                    v_run, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
                    p_menu_grace_s);
                v_run := '[]';
            END IF;
            v_rejected := ledger_staff_rejection(v_request);
        END IF;
        IF v_rejected IS NOT NULL
           OR v_request ->> 'type' IN ('void', 'card_swap', 'cash_out', 'staff_login',
                                       'staff_logout') THEN
            IF jsonb_array_length(v_run) > 0 THEN
                v_outcomes := v_outcomes || ledger_process_plain_requests(
                    v_run, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
                    p_menu_grace_s);
                v_run := '[]';
            END IF;
            IF v_rejected IS NOT NULL THEN
                v_outcomes := v_outcomes || jsonb_build_array(v_rejected);
            ELSIF v_request ->> 'type' IN ('staff_login', 'staff_logout') THEN
                v_outcomes := v_outcomes || jsonb_build_array(
                    ledger_process_staff_request(v_request, p_staff_required));
            ELSIF v_request ->> 'type' = 'cash_out' THEN
                v_outcomes := v_outcomes || jsonb_build_array(
                    ledger_process_cash_out(v_request, false));
            ELSE
                v_outcomes := v_outcomes || jsonb_build_array(ledger_process_counter_request(
                    v_request, p_balance_cents_max, p_void_window_s, false));
            END IF;
        ELSE
            v_run := v_run || jsonb_build_array(v_request);
        END IF;
    END LOOP;
    IF jsonb_array_length(v_run) > 0 THEN
        v_outcomes := v_outcomes || ledger_process_plain_requests(
            v_run, p_balance_cents_max, p_topup_cents_max, p_return_cents_max, p_menu_grace_s);
    END IF;
    RETURN v_outcomes;
END
$$;

CREATE FUNCTION sp_process_batch(
    p_requests jsonb,
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
    p_topup_cents_max bigint DEFAULT ledger_limit('topup_cents_max'),
    p_return_cents_max bigint DEFAULT ledger_limit('return_cents_max'),
    p_menu_grace_s integer DEFAULT ledger_limit('menu_grace_s'),
    p_void_window_s integer DEFAULT ledger_limit('void_window_s'),
    p_staff_required boolean DEFAULT false)
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        p_requests, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
        p_menu_grace_s, p_void_window_s, p_staff_required)
$$;

CREATE FUNCTION sp_handle_request(
    p_request jsonb,
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
    p_topup_cents_max bigint DEFAULT ledger_limit('topup_cents_max'),
    p_return_cents_max bigint DEFAULT ledger_limit('return_cents_max'),
    p_menu_grace_s integer DEFAULT ledger_limit('menu_grace_s'),
    p_void_window_s integer DEFAULT ledger_limit('void_window_s'),
    p_staff_required boolean DEFAULT false)
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        jsonb_build_array(p_request), p_balance_cents_max, p_topup_cents_max,
        p_return_cents_max, p_menu_grace_s, p_void_window_s, p_staff_required) -> 0
$$;

-- festival-cloud check: revision 0020's ledger_check, a staff login or logout expected to have
-- no transaction (marked (staff)); the downgrade restores 0020's.
CREATE OR REPLACE FUNCTION ledger_check(p_limit integer DEFAULT 20) RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp
SET enable_nestloop = off AS $$
BEGIN
    RETURN QUERY
    SELECT format('transaction %s: its postings sum to %s cents, not 0', s.transaction_id, s.total)
      FROM (SELECT p.transaction_id, sum(p.amount_cents) AS total FROM postings p
             GROUP BY p.transaction_id HAVING sum(p.amount_cents) <> 0
             ORDER BY p.transaction_id LIMIT p_limit) s;

    RETURN QUERY
    SELECT format('transaction %s (%s) has no postings', t.transaction_id, t.kind)
      FROM transactions t
     WHERE NOT EXISTS (SELECT 1 FROM postings p WHERE p.transaction_id = t.transaction_id)
     ORDER BY t.transaction_id LIMIT p_limit;

    RETURN QUERY
    SELECT format('a posting of %s cents on account %s belongs to no transaction (%s)',
                  p.amount_cents, p.account_id, p.transaction_id)
      FROM postings p
     WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.transaction_id = p.transaction_id)
     LIMIT p_limit;

    RETURN QUERY
    SELECT format('a posting of transaction %s names unknown account %s',
                  p.transaction_id, p.account_id)
      FROM postings p
     WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.account_id = p.account_id)
     LIMIT p_limit;

    RETURN QUERY
    SELECT format('card %s: cached balance %s cents, but its postings sum to %s cents',
                  c.card_uid, c.balance_cents, coalesce(s.total, 0))
      FROM cards c
      LEFT JOIN (SELECT p.account_id, sum(p.amount_cents) AS total FROM postings p
                  GROUP BY p.account_id) s ON s.account_id = c.account_id
     WHERE c.balance_cents IS DISTINCT FROM coalesce(s.total, 0)
     ORDER BY c.card_uid LIMIT p_limit;

    RETURN QUERY
    SELECT format('card %s: negative balance %s cents', c.card_uid, c.balance_cents)
      FROM cards c WHERE c.balance_cents < 0
     ORDER BY c.card_uid LIMIT p_limit;

    RETURN QUERY
    SELECT format('card account %s: its postings sum to a negative balance of %s cents',
                  a.name, s.total)
      FROM accounts a
      JOIN (SELECT p.account_id, sum(p.amount_cents) AS total FROM postings p
             GROUP BY p.account_id) s ON s.account_id = a.account_id
     WHERE a.kind = 'card' AND s.total < 0
     ORDER BY a.name LIMIT p_limit;

    RETURN QUERY
    SELECT format('approved request %s has %s ledger transactions, expected exactly 1',
                  q.request_id, coalesce(n.transactions, 0))
      FROM processed_requests q
      LEFT JOIN (SELECT t.request_id, count(*) AS transactions FROM transactions t
                  WHERE t.request_id IS NOT NULL GROUP BY t.request_id) n
             ON n.request_id = q.request_id
     WHERE q.status = 'approved' AND coalesce(n.transactions, 0) <> 1
       -- (staff) a staff login or logout moves no money: it has no transaction
       AND q.kind IS DISTINCT FROM 'staff_login' AND q.kind IS DISTINCT FROM 'staff_logout'
     ORDER BY q.request_id LIMIT p_limit;

    RETURN QUERY
    SELECT format('transaction %s names request %s, which is not approved with this transaction',
                  t.transaction_id, t.request_id)
      FROM transactions t
     WHERE t.request_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM processed_requests q
                        WHERE q.request_id = t.request_id AND q.status = 'approved'
                          AND q.transaction_id = t.transaction_id)
       -- (0015) A payout's transaction names its payout request, not a kiosk's request;
       -- a failed part's return names that part, which must have failed; (0020) a paid bank
       -- transfer names that part, which must be paid. Uncorrelated IN lists (one hashed
       -- subplan each): 0015's correlated EXISTS compared every transaction with every payout.
       AND NOT (t.kind = 'payout' AND t.request_id IN (
                    SELECT 'payout:' || o.request_id::text FROM payouts o))
       AND NOT (t.kind = 'payout_return' AND t.request_id IN (
                    SELECT 'payout-fail:' || o.payout_id::text FROM payouts o
                     WHERE o.state = 'failed'))
       AND NOT (t.kind = 'payout_paid' AND t.request_id IN (
                    SELECT 'payout-paid:' || o.payout_id::text FROM payouts o
                     WHERE o.kind = 'bank' AND o.state = 'paid'))
       -- (shifts, 0019) A cash variance names the shift close that booked it, not a kiosk's request.
       AND NOT (t.kind = 'cash_variance' AND EXISTS (
                    SELECT 1 FROM shift_closes s WHERE s.transaction_id = t.transaction_id
                       AND 'shift-close:' || s.close_id::text = t.request_id))
     ORDER BY t.transaction_id LIMIT p_limit;

    RETURN QUERY
    SELECT format('transaction %s has neither a request nor a Stripe event', t.transaction_id)
      FROM transactions t
     WHERE t.request_id IS NULL AND t.stripe_event_id IS NULL
     ORDER BY t.transaction_id LIMIT p_limit;

    RETURN QUERY
    SELECT format('transaction %s names Stripe event %s, which is not recorded',
                  t.transaction_id, t.stripe_event_id)
      FROM transactions t
     WHERE t.request_id IS NULL AND t.stripe_event_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM stripe_events e WHERE e.event_id = t.stripe_event_id)
     ORDER BY t.transaction_id LIMIT p_limit;

    RETURN QUERY
    SELECT format('credited top-up %s has no Stripe recharge transaction', u.topup_id)
      FROM topups u
     WHERE u.status = 'credited'
       AND NOT EXISTS (SELECT 1 FROM transactions t
                        WHERE t.transaction_id = u.transaction_id
                          AND t.kind = 'stripe_recharge')
     ORDER BY u.topup_id LIMIT p_limit;

    RETURN QUERY
    SELECT format('Stripe recharge transaction %s belongs to no credited top-up', t.transaction_id)
      FROM transactions t
     WHERE t.kind = 'stripe_recharge'
       AND NOT EXISTS (SELECT 1 FROM topups u
                        WHERE u.transaction_id = t.transaction_id AND u.status = 'credited')
     ORDER BY t.transaction_id LIMIT p_limit;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 6. The operator's verbs (festival-cloud staff add|pin|disable|list). The PIN is made by the
-- CLI (printed once) and hashed there (cloud/staff.py): only its hash comes here.

-- 'added', or why not: 'exists' (the staff id), 'card in use' (another staff member's band).
CREATE FUNCTION sp_staff_add(
    p_staff_id text, p_name text, p_role text, p_card_uid text, p_pin_hash text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM staff_members WHERE staff_id = p_staff_id) THEN
        RETURN 'exists';
    END IF;
    IF EXISTS (SELECT 1 FROM staff_members WHERE card_uid = p_card_uid) THEN
        RETURN 'card in use';
    END IF;
    INSERT INTO staff_members (staff_id, name, role, card_uid, pin_hash)
    VALUES (p_staff_id, p_name, p_role, p_card_uid, p_pin_hash)
    ON CONFLICT DO NOTHING;
    RETURN CASE WHEN FOUND THEN 'added' ELSE 'exists' END;
END
$$;

-- A new PIN: the old one stops working, the lock and failures go, open logins end.
CREATE FUNCTION sp_staff_set_pin(p_staff_id text, p_pin_hash text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE staff_members
       SET pin_hash = p_pin_hash,
           locked_until = NULL, updated_at = now()
     WHERE staff_id = p_staff_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM staff_login_failures WHERE staff_id = p_staff_id;
    UPDATE staff_logins SET ended_at = now(), ended_by = 'new pin',
                            kiosk_until_ms = greatest(kiosk_from_ms,
                                                      least(kiosk_until_ms, ledger_ms(now())))
     WHERE staff_id = p_staff_id AND ended_at IS NULL;
    RETURN true;
END
$$;

-- Disabled: no more logins, open logins end (their offline sales made before stay judged by them).
CREATE FUNCTION sp_staff_disable(p_staff_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE staff_members SET enabled = false, updated_at = now() WHERE staff_id = p_staff_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE staff_logins SET ended_at = now(), ended_by = 'disabled',
                            kiosk_until_ms = greatest(kiosk_from_ms,
                                                      least(kiosk_until_ms, ledger_ms(now())))
     WHERE staff_id = p_staff_id AND ended_at IS NULL;
    RETURN true;
END
$$;

-- The PIN hashes of these staff members, for the consumer to check logins against.
CREATE FUNCTION sp_staff_pin_hashes(p_staff_ids text[])
RETURNS TABLE (staff_id text, pin_hash text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT m.staff_id, m.pin_hash FROM staff_members m
     WHERE m.staff_id = ANY (p_staff_ids) ORDER BY m.staff_id
$$;

-- Every staff member (no PIN hash), with the kiosks they are logged in at now.
CREATE FUNCTION sp_staff_list() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'staff_id', m.staff_id, 'name', m.name, 'role', m.role, 'card_uid', m.card_uid,
               'enabled', m.enabled,
               'locked_until_ms', ledger_ms(m.locked_until),
               'logged_in_at', coalesce((
                   SELECT jsonb_agg(jsonb_build_object(
                              'kiosk_id', l.kiosk_id, 'since_ms', ledger_ms(l.logged_in_at),
                              'until_ms', ledger_ms(l.expires_at)) ORDER BY l.kiosk_id)
                     FROM staff_logins l
                    WHERE l.staff_id = m.staff_id AND l.ended_at IS NULL
                      AND l.expires_at > now()), '[]'))
               ORDER BY m.staff_id), '[]')
      FROM staff_members m
$$;

REVOKE EXECUTE ON FUNCTION
    ledger_staff_limit(text),
    ledger_staff_role_allows(text, text),
    ledger_staff_refusal(ledger_request, timestamptz),
    ledger_write_moneyless(ledger_request, text, jsonb, timestamptz),
    ledger_process_staff_request(jsonb, boolean),
    ledger_staff_rejection(jsonb),
    ledger_process_requests(jsonb, bigint, bigint, bigint, integer, integer, boolean),
    sp_process_batch(jsonb, bigint, bigint, bigint, integer, integer, boolean),
    sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer, boolean),
    sp_staff_add(text, text, text, text, text),
    sp_staff_set_pin(text, text),
    sp_staff_disable(text),
    sp_staff_pin_hashes(text[]),
    sp_staff_list()
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer, integer, boolean)
    TO festival_service;
GRANT EXECUTE ON FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer, boolean)
    TO festival_service, festival_api;
GRANT EXECUTE ON FUNCTION
    sp_staff_add(text, text, text, text, text),
    sp_staff_set_pin(text, text),
    sp_staff_disable(text),
    sp_staff_pin_hashes(text[]),
    sp_staff_list()
TO festival_service;
-- names and roles for the dashboard's staff table and the reports (no PIN hash)
GRANT SELECT (staff_id, name, role, enabled) ON staff_members TO festival_service, festival_api;
-- who is logged in where, for the staff report
GRANT SELECT (staff_id, kiosk_id, expires_at, ended_at) ON staff_logins TO festival_service, festival_api;
