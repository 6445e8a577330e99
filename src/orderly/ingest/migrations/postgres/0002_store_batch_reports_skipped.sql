-- The batch procedure now says WHICH requests it skipped, not only how many it inserted: the worker dead-letters a
-- request a client sent over STOMP with a token that was already used (docs/ingest.md, "STOMP").

DROP FUNCTION ingest_store_batch(uuid[], jsonb[], timestamptz[]);

-- One batch of queued requests, in delivery order, inside the caller's transaction. A token already stored (a
-- redelivery, or a client reusing its token) or revoked is skipped, so rows_before stays the exact row count at each
-- insert. Returns the 1-based positions in the batch that were skipped (empty when every request was new).
CREATE FUNCTION ingest_store_batch(p_tokens uuid[], p_numbers jsonb[], p_accepted timestamptz[])
RETURNS integer[] LANGUAGE plpgsql AS $$
DECLARE
    v_count   bigint;
    v_skipped integer[] := '{}';
    v_index   integer;
BEGIN
    PERFORM ingest_writer_lock();
    SELECT row_count INTO STRICT v_count FROM requests_counter FOR UPDATE;
    FOR v_index IN 1 .. coalesce(array_length(p_tokens, 1), 0) LOOP
        IF EXISTS (SELECT 1 FROM revoked_tokens WHERE token = p_tokens[v_index]) THEN
            v_skipped := v_skipped || v_index;
            CONTINUE;
        END IF;
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
        ELSE
            v_skipped := v_skipped || v_index;
        END IF;
    END LOOP;
    UPDATE requests_counter SET row_count = v_count;
    RETURN v_skipped;
END
$$;
