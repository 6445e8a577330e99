-- ingest: requests (JSONB) -> AFTER INSERT trigger -> PL/pgSQL procedure -> events; a daemon cursor.

CREATE TABLE requests (
    request_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token       uuid NOT NULL UNIQUE,
    body        jsonb NOT NULL,              -- {"token", "numbers", "rows_before"}
    accepted_at timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The O(1) row count: updated in the same transaction as the inserts it counts (rows are never deleted).
CREATE TABLE requests_counter (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    row_count bigint NOT NULL
);
INSERT INTO requests_counter (row_count) VALUES (0);

CREATE TABLE events (
    event_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id  bigint NOT NULL REFERENCES requests (request_id),
    token       uuid NOT NULL,
    position    integer NOT NULL,
    value       bigint NOT NULL,
    rows_before bigint NOT NULL,
    accepted_at timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL,
    UNIQUE (request_id, position)
);

-- Tokens the API answered 503 for although the broker may still have taken the message (a lost confirm):
-- the writer skips them, so "503" reliably means "will not come out".
CREATE TABLE revoked_tokens (
    token      uuid PRIMARY KEY,
    revoked_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE daemon_cursors (
    name          text PRIMARY KEY,
    last_event_id bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Every writer of requests/events takes this transaction-scoped lock before it allocates an id, so writers are
-- serialised and a later writer's ids are greater than every id of each transaction committed before it
-- (PostgreSQL makes a commit visible before it releases the transaction's locks). The key is "ingest" in ASCII.
CREATE FUNCTION ingest_writer_lock() RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(115922902020980)
$$;

-- The stored procedure the trigger calls: one event row per number, in position order, then a wake-up.
CREATE FUNCTION ingest_unpack_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ingest_writer_lock();
    INSERT INTO events (request_id, token, position, value, rows_before, accepted_at, stored_at)
    SELECT NEW.request_id, NEW.token, (item.ordinality - 1)::integer, (item.value)::bigint,
           (NEW.body ->> 'rows_before')::bigint, NEW.accepted_at, NEW.stored_at
    FROM jsonb_array_elements(NEW.body -> 'numbers') WITH ORDINALITY AS item(value, ordinality)
    ORDER BY item.ordinality;
    -- Identical notifications in one transaction collapse into one, delivered at commit.
    PERFORM pg_notify('ingest_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER requests_unpack AFTER INSERT ON requests
    FOR EACH ROW EXECUTE FUNCTION ingest_unpack_request();

-- One batch of queued requests, in delivery order, inside the caller's transaction. A token already stored (a
-- redelivery) or revoked is skipped and not counted, so rows_before stays the exact row count at each insert.
-- Returns how many requests were inserted.
CREATE FUNCTION ingest_store_batch(p_tokens uuid[], p_numbers jsonb[], p_accepted timestamptz[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_count    bigint;
    v_inserted integer := 0;
    v_index    integer;
BEGIN
    PERFORM ingest_writer_lock();
    SELECT row_count INTO STRICT v_count FROM requests_counter FOR UPDATE;
    FOR v_index IN 1 .. coalesce(array_length(p_tokens, 1), 0) LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM revoked_tokens WHERE token = p_tokens[v_index]);
        -- One statement per request: its AFTER trigger runs before the next request, so event ids follow
        -- delivery order without relying on the order in which a multi-row INSERT feeds its rows.
        INSERT INTO requests (token, body, accepted_at)
        VALUES (p_tokens[v_index],
                jsonb_build_object('token', p_tokens[v_index], 'numbers', p_numbers[v_index],
                                   'rows_before', v_count),
                p_accepted[v_index])
        ON CONFLICT (token) DO NOTHING;
        IF FOUND THEN
            v_count := v_count + 1;
            v_inserted := v_inserted + 1;
        END IF;
    END LOOP;
    UPDATE requests_counter SET row_count = v_count;
    RETURN v_inserted;
END
$$;

-- The API's decision when a publish confirm is lost: stored already -> accepted after all; else revoke the token.
CREATE FUNCTION ingest_revoke_unconfirmed(p_token uuid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ingest_writer_lock();
    IF EXISTS (SELECT 1 FROM requests WHERE token = p_token) THEN
        RETURN false;
    END IF;
    INSERT INTO revoked_tokens (token) VALUES (p_token) ON CONFLICT DO NOTHING;
    RETURN true;
END
$$;
