-- Revision 0001: the ledger's tables, its immutability and balance triggers, and the service role.
-- Runs on PostgreSQL 15 and later (multiranges need 14; nothing here needs 16+).
--
-- Sign convention (docs/ledger.md): every posting's amount_cents is signed from the point of view
-- of the account's holder, and an account's balance is the sum of its postings. A card's balance
-- is what the festival owes the attendee (positive); a sale credits the bar's sales account
-- (positive); money coming in (cash drawer, card terminal, Stripe clearing) debits those accounts
-- (negative). The postings of one transaction always sum to zero.

-- ---------------------------------------------------------------------------------------------
-- The role the running services connect as (least privilege, issue 4 item 7). Roles are
-- cluster-wide: create it only when missing, and never drop it on downgrade (another database of
-- the cluster may use it). It logs in without a password here (trust auth); in production the
-- operator sets one: ALTER ROLE festival_service PASSWORD '...'.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'festival_service') THEN
        CREATE ROLE festival_service LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created concurrently by a migration of another database
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Double-entry ledger
CREATE TABLE accounts (
    account_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- card | sales | cash | terminal | stripe | shortfall
    kind text NOT NULL CHECK (kind IN ('card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall')),
    -- 'card:<uid>', 'sales:<kiosk>', 'cash:<checkpoint>', 'terminal:<checkpoint>',
    -- 'stripe:clearing', 'shortfall:refunds'
    name text NOT NULL UNIQUE CHECK (name LIKE kind || ':%' AND length(name) <= 80),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cards (
    card_uid text PRIMARY KEY CHECK (card_uid ~ '^([0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})$'),
    account_id bigint NOT NULL UNIQUE REFERENCES accounts (account_id),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked')),
    -- Cached: always equal to the sum of the account's postings (festival-cloud check).
    balance_cents bigint NOT NULL DEFAULT 0 CONSTRAINT cards_balance_not_negative
        CHECK (balance_cents >= 0),
    blocked_reason text CHECK (length(blocked_reason) <= 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per money movement. Immutable. Each has a request (kiosk or HTTP) or a Stripe event.
CREATE TABLE transactions (
    transaction_id uuid PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN (
        'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund')),
    request_id text,
    stripe_event_id text,
    topup_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (request_id IS NOT NULL OR stripe_event_id IS NOT NULL)
);

-- No foreign keys on purpose: a key check would take a KEY SHARE lock on the hot system account
-- rows (sales of a bar) for every order, which serialises through multixacts. `festival-cloud
-- check` verifies the references instead.
CREATE TABLE postings (
    transaction_id uuid NOT NULL,
    account_id bigint NOT NULL,
    amount_cents bigint NOT NULL,
    -- The card's balance right after this posting (card accounts only): cheap history.
    balance_after_cents bigint
);
CREATE INDEX postings_account_idx ON postings (account_id, transaction_id);

CREATE FUNCTION trg_forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is forbidden: the ledger is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER postings_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION trg_forbid_change();
CREATE TRIGGER transactions_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION trg_forbid_change();

-- Every INSERT into postings must carry whole transactions: the rows it adds sum to zero per
-- transaction. The procedures insert all postings of a transaction in one statement.
CREATE FUNCTION trg_postings_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unbalanced record;
BEGIN
    SELECT transaction_id, sum(amount_cents) AS total INTO unbalanced
    FROM new_postings GROUP BY transaction_id HAVING sum(amount_cents) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'postings of transaction % sum to % cents, not 0',
            unbalanced.transaction_id, unbalanced.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER postings_balanced AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION trg_postings_balanced();

-- ---------------------------------------------------------------------------------------------
-- Kiosks: public key, role, enabled flag, presence and the seq values seen (as a multirange,
-- which merges adjacent values by itself: a well-behaved kiosk is one range forever).
CREATE TABLE kiosks (
    kiosk_id text PRIMARY KEY CHECK (kiosk_id ~ '^[a-z][a-z0-9-]{0,31}$' AND kiosk_id <> 'cloud'),
    public_key_b64 text NOT NULL CHECK (public_key_b64 ~ '^[A-Za-z0-9_-]{43}$'),
    role text NOT NULL CHECK (role IN ('bar', 'checkpoint', 'all')),
    enabled boolean NOT NULL DEFAULT true,
    state text NOT NULL DEFAULT 'unknown' CHECK (state IN ('online', 'offline', 'unknown')),
    state_at timestamptz,
    firmware text CHECK (length(firmware) <= 64),
    last_seen_at timestamptz,
    seen_seqs int8multirange NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

-- ---------------------------------------------------------------------------------------------
-- The permanent record of every processed request_id (one namespace: MQTT and HTTP). Never
-- deleted: this, not idempotency_keys, is what makes a request_id single-use forever.
CREATE TABLE processed_requests (
    request_id text PRIMARY KEY CHECK (request_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    payload_sha256 bytea NOT NULL CHECK (length(payload_sha256) = 32),
    kiosk_id text,
    source text NOT NULL CHECK (source IN ('mqtt', 'http')),
    kind text CHECK (kind IN ('bar_order', 'checkpoint_recharge')),
    status text NOT NULL CHECK (status IN ('approved', 'declined', 'rejected')),
    error_code text,
    transaction_id uuid,
    outcome jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'approved') = (transaction_id IS NOT NULL))
);

-- ---------------------------------------------------------------------------------------------
-- Stripe
CREATE TABLE stripe_events (
    event_id text PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 255),
    event_type text CHECK (length(event_type) <= 255),
    payload jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    outcome jsonb
);

-- One online top-up: created pending before the Checkout Session exists, then credited once
-- (idempotent by session_id forever), possibly refunded (refunded_cents is cumulative).
CREATE TABLE topups (
    topup_id text PRIMARY KEY CHECK (length(topup_id) BETWEEN 1 AND 255),
    session_id text UNIQUE CHECK (length(session_id) <= 255),
    payment_intent_id text CHECK (length(payment_intent_id) <= 255),
    card_uid text NOT NULL,
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- pending: created; open: checkout session attached; credited: money on the card;
    -- failed: payment failed; declined: paid but refused (balance limit) - refund it;
    -- anomaly: paid in another currency - refund it
    status text NOT NULL DEFAULT 'pending' CHECK (status IN (
        'pending', 'open', 'credited', 'failed', 'declined', 'anomaly')),
    credited_cents bigint NOT NULL DEFAULT 0 CHECK (credited_cents >= 0),
    refunded_cents bigint NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0),
    shortfall_cents bigint NOT NULL DEFAULT 0 CHECK (shortfall_cents >= 0),
    transaction_id uuid,
    outcome jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX topups_payment_intent_idx ON topups (payment_intent_id)
    WHERE payment_intent_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Messages the consumer could not accept (bad signature, unknown kiosk, not a JWS, ...).
CREATE TABLE dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic text NOT NULL CHECK (length(topic) <= 512),
    payload bytea NOT NULL,
    error_code text NOT NULL CHECK (length(error_code) <= 64),
    reason text NOT NULL CHECK (length(reason) <= 1000),
    kiosk_id text CHECK (length(kiosk_id) <= 64),
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_received_at_brin ON dead_letters USING brin (received_at);

-- ---------------------------------------------------------------------------------------------
-- Seed-compatible tables (the seed's verification and monitoring SQL runs on them unchanged).

-- A 24-hour cache of responses, as in the seed. Deleting rows never re-opens a request:
-- processed_requests is the permanent record.
CREATE TABLE idempotency_keys (
    request_id text PRIMARY KEY,
    source_function text NOT NULL,
    status text NOT NULL,
    response_payload jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL DEFAULT now() + interval '24 hours'
);
CREATE INDEX idempotency_keys_created_at_brin ON idempotency_keys USING brin (created_at);
CREATE INDEX idempotency_keys_expires_at_brin ON idempotency_keys USING brin (expires_at);

-- The audit trail: one row per processing of a request or event (replays included).
-- updated_at - created_at is the processing time (clock_timestamp() at start and end).
CREATE TABLE app_transaction_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    card_id text,
    transaction_type text NOT NULL,
    status text NOT NULL,
    amount_cents bigint,
    previous_balance_cents bigint,
    new_balance_cents bigint,
    error_code text,
    details jsonb,
    edge_function_name text NOT NULL,
    client_request_id text,
    transaction_id uuid,
    kiosk_id text,
    trace_id text,
    "timestamp" timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX app_transaction_log_timestamp_brin ON app_transaction_log USING brin ("timestamp");

CREATE TABLE nfc_scan_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kiosk_id text NOT NULL,
    card_id text,
    scan_status text NOT NULL,
    scan_timestamp timestamptz NOT NULL,
    reader text,
    duration_ms integer,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX nfc_scan_log_scan_timestamp_brin ON nfc_scan_log USING brin (scan_timestamp);

CREATE TABLE bar_orders (
    order_id uuid PRIMARY KEY,
    transaction_id uuid NOT NULL,
    client_request_id text NOT NULL,
    card_id text NOT NULL,
    kiosk_id text NOT NULL,
    staff_id text,
    total_cents bigint NOT NULL,
    status text NOT NULL DEFAULT 'completed',
    source text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bar_order_items (
    order_id uuid NOT NULL,
    line_no integer NOT NULL,
    name text NOT NULL,
    sku text,
    quantity integer NOT NULL,
    unit_price_cents bigint NOT NULL,
    is_deposit boolean NOT NULL DEFAULT false,
    is_return boolean NOT NULL DEFAULT false,
    -- quantity x unit price, negative for a return
    line_total_cents bigint NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE recharges (
    recharge_id uuid PRIMARY KEY,
    transaction_id uuid NOT NULL,
    card_id text NOT NULL,
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    payment_method text NOT NULL CHECK (payment_method IN ('cash', 'card', 'stripe')),
    client_request_id text,
    staff_id text,
    checkpoint_id text,
    kiosk_id text,
    stripe_session_id text,
    stripe_payment_intent_id text,
    source text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX recharges_stripe_session_idx ON recharges (stripe_session_id)
    WHERE stripe_session_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Privileges: the service role reads everything monitoring and the admin views need, and
-- changes nothing directly; every write goes through a SECURITY DEFINER procedure (0002).
GRANT USAGE ON SCHEMA public TO festival_service;
GRANT SELECT ON accounts, cards, transactions, postings, kiosks, processed_requests,
    stripe_events, topups, dead_letters, idempotency_keys, app_transaction_log, nfc_scan_log,
    bar_orders, bar_order_items, recharges TO festival_service;
REVOKE EXECUTE ON FUNCTION trg_forbid_change(), trg_postings_balanced() FROM PUBLIC;
