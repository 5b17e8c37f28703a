-- Revision 0005 (issue 11, items 1, 2 and the dead-letter bounds of item 7):
--   1. Cup deposits (PROTOCOL.md 1.1, bar_order): deposit lines go to ONE deposit (liability)
--      account 'deposit:cups', return lines are paid from it, the bar's sales account gets only
--      the sales lines. The deposit account never goes below zero festival-wide (its balance is
--      cached in deposit_balances with CHECK >= 0), and the return lines of one order may add up
--      to at most p_return_cents_max (FESTIVAL_RETURN_MAX_CENTS): RETURN_LIMIT_EXCEEDED otherwise.
--      ledger_check_accounts() reports a sales or deposit account below zero and a deposit cache
--      that differs from its postings (festival-cloud check runs it next to ledger_check()).
--   2. kiosks.checkpoint_id: the checkpoint a kiosk is registered for (kiosk add --checkpoint,
--      by default the kiosk id). The consumer refuses any other checkpoint_id INVALID_REQUEST and
--      fills in this one when the request names none (cloud/consumer/decisions.py).
--   7. Dead letters: at most 8192 bytes of the raw message (plus its full length and SHA-256),
--      at most p_per_minute_max stored per kiosk per minute (beyond it only a counter grows),
--      removed after 30 days by cleanup_expired_dead_letters() (festival-cloud cleanup).
--
-- Lock order from this revision on (extends revision 0002's):
--   top-up row (Stripe) -> card rows in card_uid order -> the deposit account's cache row
--   (deposit_balances, only for a batch holding a bar order with deposit or return lines) ->
--   cards first created by this batch's top-ups -> request claims -> kiosk rows in kiosk_id order.
--   Dead letters lock only their own per-kiosk-per-minute counter row, in one transaction of their
--   own. Plain orders (no deposit or return line) touch no row they did not touch before.
--
-- Signatures: sp_process_batch and sp_process_bar_order gain a last parameter
-- p_return_cents_max (default 2000), so they are dropped and created again (and granted to
-- festival_service again); every other public function keeps its signature and its grants.

-- ---------------------------------------------------------------------------------------------
-- 1. The deposit account

ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall', 'deposit'));

-- The cached balance of each deposit account (there is one: 'deposit:cups'). Like a card's
-- balance it is what the festival owes (whoever brings a cup back), kept in the same transaction
-- as the postings and checked against them by ledger_check_accounts(). Its row is locked only by
-- batches that hold a bar order with deposit or return lines.
CREATE TABLE deposit_balances (
    account_id bigint PRIMARY KEY REFERENCES accounts (account_id),
    balance_cents bigint NOT NULL DEFAULT 0 CONSTRAINT deposit_balance_not_negative
        CHECK (balance_cents >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A rollback of this revision parked the account as 'sales:deposit:cups' (see the downgrade):
-- it comes back with its postings, and its cache is their sum.
UPDATE accounts SET kind = 'deposit', name = 'deposit:cups' WHERE name = 'sales:deposit:cups';
INSERT INTO accounts (kind, name) VALUES ('deposit', 'deposit:cups')
ON CONFLICT (name) DO NOTHING;
INSERT INTO deposit_balances (account_id, balance_cents)
SELECT a.account_id,
       coalesce((SELECT sum(p.amount_cents) FROM postings p WHERE p.account_id = a.account_id), 0)
  FROM accounts a WHERE a.name = 'deposit:cups';

GRANT SELECT ON deposit_balances TO festival_service;
-- The API's role (revision 0004) reads it for the sales report (Ledger.sales_report); nothing more.
GRANT SELECT ON deposit_balances TO festival_api;

-- ---------------------------------------------------------------------------------------------
-- 2. The checkpoint each kiosk is registered for

ALTER TABLE kiosks ADD COLUMN checkpoint_id text;
UPDATE kiosks SET checkpoint_id = kiosk_id;
ALTER TABLE kiosks ALTER COLUMN checkpoint_id SET NOT NULL;
ALTER TABLE kiosks ADD CONSTRAINT kiosks_checkpoint_id_check
    CHECK (length(checkpoint_id) BETWEEN 1 AND 64 AND checkpoint_id !~ '[[:cntrl:]]');

-- A kiosk inserted without a checkpoint (sp_add_kiosk of revision 0002) is its own checkpoint.
CREATE FUNCTION trg_kiosk_default_checkpoint() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.checkpoint_id := coalesce(NEW.checkpoint_id, NEW.kiosk_id);
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION trg_kiosk_default_checkpoint() FROM PUBLIC;
CREATE TRIGGER kiosks_default_checkpoint BEFORE INSERT ON kiosks
    FOR EACH ROW EXECUTE FUNCTION trg_kiosk_default_checkpoint();

-- Register the checkpoint of an existing kiosk (NULL: the kiosk id). Called by Ledger.add_kiosk
-- right after sp_add_kiosk, in the same transaction. Returns the kiosk's record, or NULL when
-- there is no such kiosk.
CREATE FUNCTION sp_set_kiosk_checkpoint(p_kiosk_id text, p_checkpoint_id text) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE kiosks SET checkpoint_id = coalesce(p_checkpoint_id, kiosk_id), updated_at = now()
     WHERE kiosk_id = p_kiosk_id
    RETURNING jsonb_build_object('kiosk_id', kiosk_id, 'public_key_b64', public_key_b64,
                                 'role', role, 'enabled', enabled,
                                 'checkpoint_id', checkpoint_id)
$$;

-- ---------------------------------------------------------------------------------------------
-- 7. Bounded dead letters

ALTER TABLE dead_letters ADD COLUMN payload_length bigint, ADD COLUMN payload_sha256 bytea;
UPDATE dead_letters
   SET payload_length = length(payload), payload_sha256 = sha256(payload),
       payload = substring(payload FROM 1 FOR 8192);
ALTER TABLE dead_letters
    ALTER COLUMN payload_length SET NOT NULL,
    ALTER COLUMN payload_sha256 SET NOT NULL,
    ADD CONSTRAINT dead_letters_payload_bounded
        CHECK (length(payload) <= 8192 AND length(payload) <= payload_length),
    ADD CONSTRAINT dead_letters_payload_sha256_check CHECK (length(payload_sha256) = 32);

-- How many dead letters each kiosk (NULL: a topic without a kiosk level) caused per minute, and
-- how many of them were stored; the others were only counted.
CREATE TABLE dead_letter_counts (
    kiosk_id text CHECK (length(kiosk_id) <= 64),
    minute timestamptz NOT NULL,
    received_count bigint NOT NULL CHECK (received_count >= 1),
    stored_count bigint NOT NULL CHECK (stored_count BETWEEN 0 AND received_count),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX dead_letter_counts_key ON dead_letter_counts ((coalesce(kiosk_id, '')), minute);
CREATE INDEX dead_letter_counts_minute_brin ON dead_letter_counts USING brin (minute);
GRANT SELECT ON dead_letter_counts TO festival_service;

-- Count one dead letter against its kiosk's minute; store it only within the bound. The payload
-- given is already cut to 8192 bytes (cut again here); length and SHA-256 are the whole message's.
CREATE FUNCTION ledger_store_dead_letter(
    p_topic text, p_payload bytea, p_payload_length bigint, p_payload_sha256 bytea,
    p_error_code text, p_reason text, p_kiosk_id text, p_per_minute_max integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_kiosk_id text := left(p_kiosk_id, 64);
    v_minute timestamptz := date_trunc('minute', now());
    v_stored bigint;
    v_id bigint;
BEGIN
    IF p_payload IS NULL OR p_payload_length IS NULL OR p_payload_length < length(p_payload)
       OR p_payload_sha256 IS NULL OR length(p_payload_sha256) <> 32
       OR p_per_minute_max IS NULL OR p_per_minute_max < 0 THEN
        RAISE EXCEPTION 'a dead letter needs its payload, its full length, its SHA-256 and a bound'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The counter row is locked from here to the commit: the decision below cannot race.
    INSERT INTO dead_letter_counts AS c (kiosk_id, minute, received_count, stored_count)
    VALUES (v_kiosk_id, v_minute, 1, 0)
    ON CONFLICT ((coalesce(kiosk_id, '')), minute)
    DO UPDATE SET received_count = c.received_count + 1, updated_at = now()
    RETURNING c.stored_count INTO v_stored;
    IF v_stored >= p_per_minute_max THEN
        RETURN NULL;  -- over the bound: only the counter grew
    END IF;
    UPDATE dead_letter_counts SET stored_count = stored_count + 1
     WHERE coalesce(kiosk_id, '') = coalesce(v_kiosk_id, '') AND minute = v_minute;
    INSERT INTO dead_letters (
        topic, payload, payload_length, payload_sha256, error_code, reason, kiosk_id)
    VALUES (left(p_topic, 512), substring(p_payload FROM 1 FOR 8192), p_payload_length,
            p_payload_sha256, left(p_error_code, 64), left(p_reason, 1000), v_kiosk_id)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

-- Dead letters in one call: p_letters = [{topic, payload_hex (at most 8192 bytes),
-- payload_length, payload_sha256 (hex), error_code, reason, kiosk_id}]. Returns, per letter, its
-- id when stored or null when only counted.
CREATE FUNCTION sp_record_dead_letters(p_letters jsonb, p_per_minute_max integer DEFAULT 60)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    r record;
    v_ids jsonb := '[]';
BEGIN
    IF jsonb_typeof(p_letters) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_letters must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR r IN
        SELECT * FROM jsonb_to_recordset(p_letters) AS x(
            topic text, payload_hex text, payload_length bigint, payload_sha256 text,
            error_code text, reason text, kiosk_id text)
    LOOP
        -- jsonb_build_array: a null id (only counted) stays a JSON null in the array
        v_ids := v_ids || jsonb_build_array(ledger_store_dead_letter(
            r.topic, decode(coalesce(r.payload_hex, ''), 'hex'), r.payload_length,
            decode(r.payload_sha256, 'hex'), r.error_code, r.reason, r.kiosk_id,
            p_per_minute_max));
    END LOOP;
    RETURN v_ids;
END
$$;

-- Revision 0002's entry point, same signature, now bounded the same way (default bound 60).
-- Returns the new row's id, or NULL when the letter was only counted.
CREATE OR REPLACE FUNCTION sp_record_dead_letter(
    p_topic text, p_payload bytea, p_error_code text, p_reason text, p_kiosk_id text)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_store_dead_letter(
        p_topic, substring(p_payload FROM 1 FOR 8192), length(p_payload), sha256(p_payload),
        p_error_code, p_reason, p_kiosk_id, 60)
$$;

-- Dead letters and their counters older than 30 days go (festival-cloud cleanup). Returns how
-- many dead letters were deleted.
CREATE FUNCTION cleanup_expired_dead_letters() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_deleted integer;
BEGIN
    DELETE FROM dead_letters WHERE received_at < now() - interval '30 days';
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    DELETE FROM dead_letter_counts WHERE minute < now() - interval '30 days';
    RETURN v_deleted;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 1 (continued). Bar orders and top-ups with the deposit account: revision 0002's batch
-- procedure with the deposit rules added (marked "0005" below); everything else is unchanged.

DROP FUNCTION sp_process_batch(jsonb, bigint, bigint);
DROP FUNCTION sp_process_bar_order(
    text, text, jsonb, bigint, text, text, bigint, text, text, text, bigint);
DROP FUNCTION ledger_process_requests(jsonb, bigint, bigint);

-- '12.50' for 1250: amounts in the texts a kiosk screen shows.
CREATE FUNCTION ledger_amount_text(p_cents bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_cents < 0 THEN '-' ELSE '' END || (abs(p_cents) / 100)::text || '.'
           || lpad((abs(p_cents) % 100)::text, 2, '0')
$$;

-- Revision 0002's batch procedure (see its comments there), with the deposit rules of 0005:
-- a bar order with deposit or return lines is decided against the deposit account's balance,
-- which this batch locks (after the cards) only when it holds such an order.
CREATE FUNCTION ledger_process_requests(
    p_requests jsonb, p_balance_cents_max bigint, p_topup_cents_max bigint,
    p_return_cents_max bigint)
RETURNS jsonb
LANGUAGE plpgsql
-- Plan once per session: re-planning the big write statement for every call (PL/pgSQL's custom
-- plans for array and jsonb parameters) cost more than executing it. Every statement here is
-- an index lookup by key or a scan of the batch itself, so the generic plan is the right one.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_now_ms bigint := ledger_ms(v_started);
    r record;
    v_index integer;
    v_card_index integer;
    v_sha bytea;
    v_code text;
    v_previous bigint;
    v_new bigint;
    v_delta bigint;
    v_tx uuid;
    v_order uuid;
    v_outcome jsonb;
    v_card cards;
    v_names text[];
    v_request_ids text[];
    v_card_uids text[];
    v_new_count integer := 0;
    v_claimed bigint;
    v_bad_totals bigint;
    v_kiosks text[];
    v_seqs bigint[];
    -- the batch's cards, locked, in card_uid order, with their balances as decided so far
    c_uid text[];
    c_balance bigint[];
    c_status text[];
    c_dirty boolean[];
    -- requests already processed (before this batch or earlier in it)
    e_id text[];
    e_sha bytea[];
    e_outcome jsonb[];
    -- per input position: its outcome, and whether it is new, a replay or a conflict
    v_outcomes jsonb[] := '{}';
    v_flags text[] := '{}';
    -- 0005: the deposit account, read and locked only for a batch with deposit or return lines
    v_has_deposit_lines boolean;
    v_deposit_account_id bigint;
    v_deposit_balance bigint;
    v_deposit_dirty boolean := false;
    v_deposits_cents bigint;
    v_returns_cents bigint;
    v_deposit_delta bigint;
    v_message text;
    v_position integer := 0;
    v_found_deposit_line boolean;
    -- per input position: what an approved order moves on the deposit account (null: nothing)
    v_deposit_deltas bigint[] := '{}';
BEGIN
    IF jsonb_typeof(p_requests) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_requests must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_balance_cents_max IS NULL OR p_balance_cents_max < 0
       OR p_topup_cents_max IS NULL OR p_topup_cents_max < 1
       OR p_return_cents_max IS NULL OR p_return_cents_max < 0 THEN
        RAISE EXCEPTION 'invalid limits' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 1. What the batch touches: request ids, cards, system accounts.
    SELECT array_agg(x ->> 'request_id'),
           array_agg(DISTINCT x ->> 'card_uid'),
           array_agg(DISTINCT CASE x ->> 'type'
               WHEN 'bar_order' THEN 'sales:' || (x ->> 'kiosk_id')
               ELSE CASE x ->> 'payment_method' WHEN 'cash' THEN 'cash:' ELSE 'terminal:' END
                    || coalesce(x ->> 'checkpoint_id', x ->> 'kiosk_id')
           END),
           -- 0005: the kiosk and the HTTP path always write both flags of every line
           coalesce(bool_or(x ->> 'type' = 'bar_order'
                            AND (x -> 'items' @> '[{"is_deposit": true}]'
                                 OR x -> 'items' @> '[{"is_return": true}]')), false)
      INTO v_request_ids, v_card_uids, v_names, v_has_deposit_lines
      FROM jsonb_array_elements(p_requests) x;

    -- 2. Lock every card of the batch, in card_uid order (no deadlock between batches).
    SELECT array_agg(k.card_uid ORDER BY k.card_uid), array_agg(k.balance_cents ORDER BY k.card_uid),
           array_agg(k.status ORDER BY k.card_uid), array_agg(false)
      INTO c_uid, c_balance, c_status, c_dirty
      FROM (SELECT cards.card_uid, cards.balance_cents, cards.status
              FROM cards WHERE cards.card_uid = ANY (v_card_uids)
             ORDER BY cards.card_uid
               FOR UPDATE) k;

    -- 2b. (0005) The deposit account's cached balance, locked after the cards, only when an
    -- order of this batch has deposit or return lines: plain orders never wait for it.
    IF v_has_deposit_lines THEN
        SELECT d.account_id, d.balance_cents INTO v_deposit_account_id, v_deposit_balance
          FROM deposit_balances d JOIN accounts a ON a.account_id = d.account_id
         WHERE a.name = 'deposit:cups'
           FOR UPDATE OF d;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the deposit account deposit:cups has no cached balance (revision 0005)'
                USING ERRCODE = 'internal_error';
        END IF;
        v_deposit_deltas := array_fill(NULL::bigint, ARRAY[jsonb_array_length(p_requests)]);
    END IF;

    -- 3. The system accounts the batch posts to exist (created once, on first use).
    IF (SELECT count(*) FROM accounts a WHERE a.name = ANY (v_names)) < cardinality(v_names) THEN
        INSERT INTO accounts (kind, name)
        SELECT split_part(n.name, ':', 1), n.name FROM unnest(v_names) AS n(name)
        ON CONFLICT (name) DO NOTHING;
    END IF;

    -- 4. The claims that already exist (read under the card locks).
    SELECT array_agg(q.request_id), array_agg(q.payload_sha256), array_agg(q.outcome)
      INTO e_id, e_sha, e_outcome
      FROM processed_requests q WHERE q.request_id = ANY (v_request_ids);

    -- 5. Decide every request in order, in memory. Only decisions here; rows are written below.
    FOR r IN
        SELECT * FROM jsonb_to_recordset(p_requests) AS x(
            type text, request_id text, payload_sha256 text, kiosk_id text, card_uid text,
            source text, items jsonb, total_cents bigint, staff_id text, amount_cents bigint,
            payment_method text)
    LOOP
        v_position := v_position + 1;
        IF r.request_id IS NULL OR r.kiosk_id IS NULL OR r.card_uid IS NULL
           OR r.source IS NULL OR r.source NOT IN ('mqtt', 'http')
           OR NOT coalesce(r.payload_sha256 ~ '^[0-9a-fA-F]{64}$', false) THEN
            RAISE EXCEPTION 'malformed request % (request_id, kiosk_id, card_uid, source and a hex payload_sha256 are required)',
                left(coalesce(r.request_id, '?'), 64)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF r.type = 'bar_order' THEN
            IF r.total_cents IS NULL OR jsonb_typeof(r.items) IS DISTINCT FROM 'array' THEN
                RAISE EXCEPTION 'bar order % needs items and total_cents', r.request_id
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_delta := -r.total_cents;
        ELSIF r.type = 'checkpoint_recharge' THEN
            IF r.amount_cents IS NULL OR r.amount_cents < 1 OR r.amount_cents > p_topup_cents_max
               OR r.payment_method IS NULL OR r.payment_method NOT IN ('cash', 'card')
               OR r.staff_id IS NULL THEN
                RAISE EXCEPTION 'checkpoint recharge % needs amount_cents 1..%, payment_method cash|card and staff_id',
                    r.request_id, p_topup_cents_max
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_delta := r.amount_cents;
        ELSE
            RAISE EXCEPTION 'unknown request type %', left(coalesce(r.type, 'null'), 32)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_sha := decode(r.payload_sha256, 'hex');

        v_index := array_position(e_id, r.request_id);
        IF v_index IS NOT NULL THEN
            -- Seen before: the stored outcome again, or a conflict. Nothing changes.
            IF e_sha[v_index] = v_sha THEN
                v_outcomes := v_outcomes || (e_outcome[v_index] || '{"replayed": true}');
                v_flags := v_flags || 'replayed'::text;
            ELSE
                v_outcomes := v_outcomes || jsonb_build_object(
                    'request_id', r.request_id, 'status', 'rejected',
                    'error_code', 'IDEMPOTENCY_CONFLICT',
                    'message', 'Request id already used for a different request',
                    'transaction_id', NULL, 'previous_balance_cents', NULL,
                    'new_balance_cents', NULL, 'replayed', false,
                    'processed_at_ms', v_now_ms, 'order_id', NULL, 'card_uid', r.card_uid);
                v_flags := v_flags || 'conflict'::text;
            END IF;
            CONTINUE;
        END IF;

        v_card_index := array_position(c_uid, r.card_uid);
        IF v_card_index IS NULL AND r.type = 'checkpoint_recharge' THEN
            -- The first top-up activates a wristband.
            v_card := ledger_open_card(r.card_uid);
            c_uid := c_uid || v_card.card_uid;
            c_balance := c_balance || v_card.balance_cents;
            c_status := c_status || v_card.status;
            c_dirty := c_dirty || false;
            v_card_index := cardinality(c_uid);
        END IF;

        v_code := NULL;
        v_message := NULL;
        v_previous := NULL;
        v_new := NULL;
        v_tx := NULL;
        v_order := NULL;
        -- 0005: what the order's deposit lines charge and its return lines pay back
        v_deposit_delta := NULL;
        IF v_has_deposit_lines AND r.type = 'bar_order' THEN
            SELECT coalesce(sum(i.quantity * i.unit_price_cents)
                                FILTER (WHERE coalesce(i.is_deposit, false)
                                          AND NOT coalesce(i.is_return, false)), 0),
                   coalesce(sum(i.quantity * i.unit_price_cents)
                                FILTER (WHERE coalesce(i.is_return, false)), 0),
                   coalesce(bool_or(coalesce(i.is_deposit, false) OR coalesce(i.is_return, false)),
                            false)
              INTO v_deposits_cents, v_returns_cents, v_found_deposit_line
              FROM jsonb_to_recordset(r.items) AS i(
                       quantity bigint, unit_price_cents bigint, is_deposit boolean,
                       is_return boolean);
            IF v_found_deposit_line THEN
                v_deposit_delta := v_deposits_cents - v_returns_cents;
            END IF;
        END IF;
        IF v_card_index IS NULL THEN
            v_code := 'CARD_NOT_FOUND';
        ELSE
            v_previous := c_balance[v_card_index];
            v_new := v_previous;
            IF c_status[v_card_index] <> 'active' THEN
                v_code := 'CARD_BLOCKED';
            -- 0005: returns are bounded per order and by what was ever deposited (the order's
            -- own deposit lines count first), before the balance rules.
            ELSIF v_deposit_delta IS NOT NULL AND v_returns_cents > p_return_cents_max THEN
                v_code := 'RETURN_LIMIT_EXCEEDED';
                v_message := format('Returns of %s exceed the limit of %s per order',
                                    ledger_amount_text(v_returns_cents),
                                    ledger_amount_text(p_return_cents_max));
            ELSIF v_deposit_delta IS NOT NULL AND v_deposit_balance + v_deposit_delta < 0 THEN
                v_code := 'RETURN_LIMIT_EXCEEDED';
                v_message := 'More cups returned than deposits were charged: see a supervisor';
            ELSIF v_previous + v_delta < 0 THEN
                v_code := 'INSUFFICIENT_FUNDS';
            ELSIF v_delta > 0 AND v_previous + v_delta > p_balance_cents_max THEN
                v_code := 'BALANCE_LIMIT_EXCEEDED';
            END IF;
        END IF;

        IF v_code IS NULL THEN
            -- ledger_uuid7() inlined: this loop is the hot path.
            v_tx := encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                        PLACING substring(int8send(ledger_ms(clock_timestamp())) FROM 3)
                        FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid;
            IF r.type = 'bar_order' THEN
                v_order := encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                            PLACING substring(int8send(ledger_ms(clock_timestamp())) FROM 3)
                            FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid;
            END IF;
            v_new := v_previous + v_delta;
            c_balance[v_card_index] := v_new;
            c_dirty[v_card_index] := true;
            IF v_deposit_delta IS NOT NULL THEN
                v_deposit_balance := v_deposit_balance + v_deposit_delta;
                v_deposit_dirty := true;
                v_deposit_deltas[v_position] := v_deposit_delta;
            END IF;
        END IF;

        v_outcome := jsonb_build_object(
            'request_id', r.request_id,
            'status', CASE WHEN v_code IS NULL THEN 'approved' ELSE 'declined' END,
            'error_code', v_code,
            'message', coalesce(v_message, CASE v_code
                WHEN 'CARD_NOT_FOUND' THEN 'Unknown card: top it up first'
                WHEN 'CARD_BLOCKED' THEN 'Card blocked: please see the info desk'
                WHEN 'INSUFFICIENT_FUNDS' THEN 'Insufficient funds'
                WHEN 'BALANCE_LIMIT_EXCEEDED' THEN 'Balance limit exceeded'
                ELSE CASE r.type WHEN 'bar_order' THEN 'Paid' ELSE 'Topped up' END
            END),
            'transaction_id', v_tx,
            'previous_balance_cents', v_previous,
            'new_balance_cents', v_new,
            'replayed', false,
            'processed_at_ms', v_now_ms,
            'order_id', v_order,
            'card_uid', r.card_uid);
        v_outcomes := v_outcomes || v_outcome;
        v_flags := v_flags || 'new'::text;
        v_new_count := v_new_count + 1;
        e_id := e_id || r.request_id;
        e_sha := e_sha || v_sha;
        e_outcome := e_outcome || v_outcome;
    END LOOP;

    -- 6. Write every row in one statement: claims, balances, transactions, postings (one INSERT,
    -- so the balance trigger sees whole transactions), the seed-compatible rows and the audit log.
    -- A claim lost to a concurrent transaction shows as fewer claimed rows than new requests.
    WITH input AS (
        SELECT x.*, o.outcome, o.flag, o.deposit_delta,
               CASE x.type WHEN 'bar_order' THEN 'process-bar-order'
                           ELSE 'process-checkpoint-recharge' END AS edge
          FROM ROWS FROM (jsonb_to_recordset(p_requests) AS (
                   type text, request_id text, payload_sha256 text, kiosk_id text, seq bigint,
                   card_uid text, source text, trace_id text, items jsonb, total_cents bigint,
                   staff_id text, amount_cents bigint, payment_method text, checkpoint_id text))
               WITH ORDINALITY AS x(
                   type, request_id, payload_sha256, kiosk_id, seq, card_uid, source, trace_id,
                   items, total_cents, staff_id, amount_cents, payment_method, checkpoint_id,
                   position)
          JOIN unnest(v_outcomes, v_flags, v_deposit_deltas)
               WITH ORDINALITY AS o(outcome, flag, deposit_delta, position)
            USING (position)
    ), fresh AS (
        SELECT * FROM input WHERE flag = 'new'
    ), approved AS (
        SELECT f.*, (f.outcome ->> 'transaction_id')::uuid AS transaction_id,
               (f.outcome ->> 'new_balance_cents')::bigint AS new_balance_cents,
               CASE f.type WHEN 'bar_order' THEN -f.total_cents ELSE f.amount_cents END
                   AS delta_cents,
               CASE f.type
                   WHEN 'bar_order' THEN 'sales:' || f.kiosk_id
                   ELSE CASE f.payment_method WHEN 'cash' THEN 'cash:' ELSE 'terminal:' END
                        || coalesce(f.checkpoint_id, f.kiosk_id)
               END AS counter_account
          FROM fresh f WHERE f.outcome ->> 'status' = 'approved'
    ), claims AS (
        INSERT INTO processed_requests (
            request_id, payload_sha256, kiosk_id, source, kind, status, error_code,
            transaction_id, outcome, created_at)
        SELECT f.request_id, decode(f.payload_sha256, 'hex'), f.kiosk_id, f.source, f.type,
               f.outcome ->> 'status', f.outcome ->> 'error_code',
               (f.outcome ->> 'transaction_id')::uuid, f.outcome, v_started
          FROM fresh f
        ON CONFLICT (request_id) DO NOTHING
        RETURNING 1
    ), balances AS (
        UPDATE cards k SET balance_cents = u.balance_cents, updated_at = v_started
          FROM unnest(c_uid, c_balance, c_dirty) AS u(card_uid, balance_cents, dirty)
         WHERE u.dirty AND k.card_uid = u.card_uid
        RETURNING 1
    ), deposit AS (
        -- 0005: the deposit account's cache, in the same transaction as its postings
        UPDATE deposit_balances d SET balance_cents = v_deposit_balance, updated_at = v_started
         WHERE v_deposit_dirty AND d.account_id = v_deposit_account_id
        RETURNING 1
    ), ledger_transactions AS (
        INSERT INTO transactions (transaction_id, kind, request_id, created_at)
        SELECT a.transaction_id, a.type, a.request_id, v_started FROM approved a
        RETURNING 1
    ), ledger_postings AS (
        INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
        SELECT a.transaction_id, p.account_id, p.amount_cents, p.balance_after_cents
          FROM approved a
          JOIN cards c ON c.card_uid = a.card_uid
          JOIN accounts s ON s.name = a.counter_account
         -- 0005: the card pays (or gets) the total; the sales account gets the sales lines; the
         -- deposit account the deposits minus the returns. A plain order posts exactly as in
         -- 0002 (card and sales, always); an order with deposit lines skips a zero posting.
         CROSS JOIN LATERAL (VALUES
              (c.account_id, a.delta_cents, a.new_balance_cents, true),
              (s.account_id, -a.delta_cents - coalesce(a.deposit_delta, 0), NULL::bigint,
               a.deposit_delta IS NULL),
              (v_deposit_account_id, a.deposit_delta, NULL::bigint, false))
              AS p(account_id, amount_cents, balance_after_cents, always)
         WHERE p.always OR p.amount_cents <> 0
        RETURNING 1
    ), orders AS (
        INSERT INTO bar_orders (
            order_id, transaction_id, client_request_id, card_id, kiosk_id, staff_id,
            total_cents, source, created_at)
        SELECT (a.outcome ->> 'order_id')::uuid, a.transaction_id, a.request_id, a.card_uid,
               a.kiosk_id, a.staff_id, a.total_cents, a.source, v_started
          FROM approved a WHERE a.type = 'bar_order'
        RETURNING 1
    ), order_lines AS (
        INSERT INTO bar_order_items (
            order_id, line_no, name, sku, quantity, unit_price_cents, is_deposit, is_return,
            line_total_cents)
        SELECT (a.outcome ->> 'order_id')::uuid, i.line_no, i.name, i.sku, i.quantity,
               i.unit_price_cents, coalesce(i.is_deposit, false), coalesce(i.is_return, false),
               CASE WHEN coalesce(i.is_return, false) THEN -1 ELSE 1 END
               * i.quantity * i.unit_price_cents
          FROM approved a
         CROSS JOIN LATERAL ROWS FROM (
              jsonb_to_recordset(a.items) AS (
                  name text, sku text, quantity integer, unit_price_cents bigint,
                  is_deposit boolean, is_return boolean))
              WITH ORDINALITY AS i(
                  name, sku, quantity, unit_price_cents, is_deposit, is_return, line_no)
         WHERE a.type = 'bar_order'
        RETURNING order_id, line_total_cents
    ), checkpoint_topups AS (
        INSERT INTO recharges (
            recharge_id, transaction_id, card_id, amount_cents, payment_method,
            client_request_id, staff_id, checkpoint_id, kiosk_id, source, created_at)
        SELECT ledger_uuid7(), a.transaction_id, a.card_uid, a.amount_cents, a.payment_method,
               a.request_id, a.staff_id, coalesce(a.checkpoint_id, a.kiosk_id), a.kiosk_id,
               a.source, v_started
          FROM approved a WHERE a.type = 'checkpoint_recharge'
        RETURNING 1
    ), audit AS (
        INSERT INTO app_transaction_log (
            card_id, transaction_type, status, amount_cents, previous_balance_cents,
            new_balance_cents, error_code, details, edge_function_name, client_request_id,
            transaction_id, kiosk_id, trace_id, "timestamp", created_at, updated_at)
        SELECT i.card_uid, i.type,
               CASE i.flag WHEN 'replayed' THEN 'replayed' ELSE i.outcome ->> 'status' END,
               coalesce(i.total_cents, i.amount_cents),
               (i.outcome ->> 'previous_balance_cents')::bigint,
               (i.outcome ->> 'new_balance_cents')::bigint, i.outcome ->> 'error_code',
               jsonb_build_object('source', i.source, 'seq', i.seq,
                                  'replayed', i.flag = 'replayed'),
               i.edge, i.request_id,
               CASE WHEN i.flag = 'new' THEN (i.outcome ->> 'transaction_id')::uuid END,
               i.kiosk_id, i.trace_id, v_started, v_started, clock_timestamp()
          FROM input i
        RETURNING 1
    ), cache AS (
        INSERT INTO idempotency_keys (
            request_id, source_function, status, response_payload, created_at, updated_at,
            expires_at)
        SELECT f.request_id, f.edge, f.outcome ->> 'status', f.outcome, v_started,
               clock_timestamp(), v_started + interval '24 hours'
          FROM fresh f
        ON CONFLICT (request_id) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM claims),
           -- The items must add up to what the card was charged (checked in Python and here).
           (SELECT count(*)
              FROM approved a
              LEFT JOIN (SELECT l.order_id, sum(l.line_total_cents) AS total_cents
                           FROM order_lines l GROUP BY l.order_id) l
                     ON l.order_id = (a.outcome ->> 'order_id')::uuid
             WHERE a.type = 'bar_order' AND coalesce(l.total_cents, 0) <> a.total_cents),
           seqs.kiosk_ids, seqs.seqs
      INTO v_claimed, v_bad_totals, v_kiosks, v_seqs
      FROM (SELECT array_agg(f.kiosk_id ORDER BY f.position) AS kiosk_ids,
                   array_agg(f.seq ORDER BY f.position) AS seqs
              FROM fresh f WHERE f.source = 'mqtt' AND f.seq IS NOT NULL) seqs;

    IF v_claimed <> v_new_count THEN
        RAISE EXCEPTION 'a request_id of this batch was claimed by a concurrent transaction; retry'
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF v_bad_totals > 0 THEN
        RAISE EXCEPTION 'a bar order''s total_cents is not the sum of its items'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 7. Seq tracking, last: kiosk rows come after cards and claims in the lock order.
    IF cardinality(v_kiosks) > 0 THEN
        PERFORM ledger_track_seqs(v_kiosks, v_seqs, v_started);
    END IF;

    RETURN to_jsonb(v_outcomes);
END
$$;

CREATE FUNCTION sp_process_batch(
    p_requests jsonb,
    p_balance_cents_max bigint DEFAULT 150000,
    p_topup_cents_max bigint DEFAULT 100000,
    p_return_cents_max bigint DEFAULT 2000)
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        p_requests, p_balance_cents_max, p_topup_cents_max, p_return_cents_max)
$$;

-- One bar order (the seed's procedure name). p_items: [{name, quantity, unit_price_cents, sku,
-- is_deposit, is_return}]; p_total_cents may be negative (returns only): then the card is credited.
CREATE FUNCTION sp_process_bar_order(
    p_request_id text,
    p_card_uid text,
    p_items jsonb,
    p_total_cents bigint,
    p_payload_sha256 text,
    p_kiosk_id text,
    p_seq bigint DEFAULT NULL,
    p_staff_id text DEFAULT NULL,
    p_source text DEFAULT 'mqtt',
    p_trace_id text DEFAULT NULL,
    p_balance_cents_max bigint DEFAULT 150000,
    p_return_cents_max bigint DEFAULT 2000)
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        jsonb_build_array(jsonb_build_object(
            'type', 'bar_order', 'request_id', p_request_id, 'card_uid', p_card_uid,
            'items', p_items, 'total_cents', p_total_cents, 'payload_sha256', p_payload_sha256,
            'kiosk_id', p_kiosk_id, 'seq', p_seq, 'staff_id', p_staff_id, 'source', p_source,
            'trace_id', p_trace_id)),
        p_balance_cents_max, 1, p_return_cents_max) -> 0
$$;

-- One cash or card top-up at a checkpoint (the seed's procedure name). An unknown card is created.
CREATE OR REPLACE FUNCTION sp_process_checkpoint_recharge(
    p_request_id text,
    p_card_uid text,
    p_amount_cents bigint,
    p_payment_method text,
    p_staff_id text,
    p_payload_sha256 text,
    p_kiosk_id text,
    p_seq bigint DEFAULT NULL,
    p_checkpoint_id text DEFAULT NULL,
    p_source text DEFAULT 'mqtt',
    p_trace_id text DEFAULT NULL,
    p_balance_cents_max bigint DEFAULT 150000,
    p_topup_cents_max bigint DEFAULT 100000)
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        jsonb_build_array(jsonb_build_object(
            'type', 'checkpoint_recharge', 'request_id', p_request_id, 'card_uid', p_card_uid,
            'amount_cents', p_amount_cents, 'payment_method', p_payment_method,
            'staff_id', p_staff_id, 'payload_sha256', p_payload_sha256, 'kiosk_id', p_kiosk_id,
            'seq', p_seq, 'checkpoint_id', p_checkpoint_id, 'source', p_source,
            'trace_id', p_trace_id)),
        p_balance_cents_max, p_topup_cents_max, 0) -> 0
$$;

-- ---------------------------------------------------------------------------------------------
-- 1 (continued). The accounts' signs and the deposit cache, for festival-cloud check (which runs
-- ledger_check() and this). A sales account only ever receives sales lines and the deposit
-- account never pays out more than it took, so either below zero means money was minted.
CREATE FUNCTION ledger_check_accounts(p_limit integer DEFAULT 20) RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT format('%s account %s: its postings sum to %s cents, below zero (the wrong sign)',
                  a.kind, a.name, s.total)
      FROM accounts a
     CROSS JOIN LATERAL (SELECT coalesce(sum(p.amount_cents), 0) AS total
                           FROM postings p WHERE p.account_id = a.account_id) s
     WHERE a.kind IN ('sales', 'deposit') AND s.total < 0
     ORDER BY a.name LIMIT p_limit;

    RETURN QUERY
    SELECT format('deposit account %s: cached balance %s cents, but its postings sum to %s cents',
                  a.name, d.balance_cents, s.total)
      FROM deposit_balances d
      JOIN accounts a ON a.account_id = d.account_id
     CROSS JOIN LATERAL (SELECT coalesce(sum(p.amount_cents), 0) AS total
                           FROM postings p WHERE p.account_id = d.account_id) s
     WHERE d.balance_cents IS DISTINCT FROM s.total
     ORDER BY a.name LIMIT p_limit;

    RETURN QUERY
    SELECT format('deposit account %s has no cached balance', a.name)
      FROM accounts a
     WHERE a.kind = 'deposit'
       AND NOT EXISTS (SELECT 1 FROM deposit_balances d WHERE d.account_id = a.account_id)
     ORDER BY a.name LIMIT p_limit;

    RETURN QUERY
    SELECT format('cached deposit balance of account %s, which is not a deposit account',
                  d.account_id)
      FROM deposit_balances d
     WHERE NOT EXISTS (SELECT 1 FROM accounts a
                        WHERE a.account_id = d.account_id AND a.kind = 'deposit')
     ORDER BY d.account_id LIMIT p_limit;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Privileges, as in revision 0002: no EXECUTE for PUBLIC on anything new; the service role gets
-- the entry points (the two re-created ones again), the ledger_* helpers stay the owner's.
REVOKE EXECUTE ON FUNCTION ledger_amount_text(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ledger_process_requests(jsonb, bigint, bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ledger_store_dead_letter(
    text, bytea, bigint, bytea, text, text, text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_process_bar_order(
    text, text, jsonb, bigint, text, text, bigint, text, text, text, bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_set_kiosk_checkpoint(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_record_dead_letters(jsonb, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cleanup_expired_dead_letters() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ledger_check_accounts(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint) TO festival_service;
GRANT EXECUTE ON FUNCTION sp_process_bar_order(
    text, text, jsonb, bigint, text, text, bigint, text, text, text, bigint, bigint)
    TO festival_service;
GRANT EXECUTE ON FUNCTION sp_set_kiosk_checkpoint(text, text) TO festival_service;
GRANT EXECUTE ON FUNCTION sp_record_dead_letters(jsonb, integer) TO festival_service;
GRANT EXECUTE ON FUNCTION cleanup_expired_dead_letters() TO festival_service;
GRANT EXECUTE ON FUNCTION ledger_check_accounts(integer) TO festival_service;

-- The return alert of the dashboard and metrics (cloud/api/queries.py) reads the last hour of bar
-- orders: a BRIN index keeps that cheap on an append-only, time-ordered table.
CREATE INDEX bar_orders_created_at_brin ON bar_orders USING brin (created_at);
