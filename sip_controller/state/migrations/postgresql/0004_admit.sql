-- 0004 (#18): the whole admission of a new call in ONE statement, so one round trip and no BEGIN/COMMIT: the dedupe
-- claims (all or none), the caller's sliding window, the cluster-wide capacity, the call row and its outbox rows.
-- A single statement is atomic by itself; the advisory locks are transaction-scoped (released as it ends), taken in
-- one order (caller, then live calls) by every admission, and the claim rows are inserted in key order, so two
-- admissions never wait on each other in a cycle. Volatile PL/pgSQL: every statement after a lock takes a fresh
-- snapshot, so each count sees every row committed before the lock was granted.
-- The outcome: admitted, claimed (no call given), duplicate (held = the first key already claimed; nothing
-- written), rate_limited, at_capacity, exists (the call_id has a row); in the last three the claims stay written
-- and the caller is not counted.

CREATE FUNCTION sipctl_admit(
    p_keys text[], p_expires_at double precision, p_now double precision,
    p_call_id text, p_owner text, p_state text, p_profile text, p_inputs jsonb, p_caller text, p_dialed text,
    p_received_at double precision, p_accepted_at double precision, p_deadlines jsonb, p_cost_usd double precision,
    p_max_live bigint, p_rate_key text, p_rate_limit bigint, p_window_s double precision,
    p_outbox_keys text[], p_outbox_call_ids text[], p_outbox_destinations text[], p_outbox_events text[], p_outbox_payloads text[],
    p_outbox_due double precision[]
) RETURNS TABLE (outcome text, held text) LANGUAGE plpgsql AS $$
DECLARE
    won text[];
BEGIN
    WITH claimed AS (
        INSERT INTO claims (key, expires_at)
        SELECT k, p_expires_at FROM unnest(p_keys) AS k ORDER BY k
        ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at WHERE claims.expires_at <= p_now
        RETURNING key
    )
    SELECT coalesce(array_agg(key), '{}') INTO won FROM claimed;
    IF cardinality(won) < cardinality(p_keys) THEN
        -- undo the keys this statement took (new rows, or expired ones it renewed: gone either way)
        DELETE FROM claims WHERE key = ANY (won);
        RETURN QUERY SELECT 'duplicate'::text, k FROM unnest(p_keys) WITH ORDINALITY AS t(k, n)
            WHERE k <> ALL (won) ORDER BY n LIMIT 1;
        RETURN;
    END IF;
    IF p_call_id IS NULL THEN
        RETURN QUERY SELECT 'claimed'::text, NULL::text;
        RETURN;
    END IF;
    IF p_rate_limit > 0 THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('sipctl:caller:' || current_schema() || ':' || p_rate_key, 0));
        IF (SELECT count(*) FROM caller_hits WHERE key = p_rate_key AND at > p_now - p_window_s) >= p_rate_limit THEN
            RETURN QUERY SELECT 'rate_limited'::text, NULL::text;
            RETURN;
        END IF;
    END IF;
    IF p_max_live IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('sipctl:live_calls:' || current_schema(), 0));
        IF (SELECT count(*) FROM calls WHERE ended_at IS NULL) >= p_max_live THEN
            RETURN QUERY SELECT 'at_capacity'::text, NULL::text;
            RETURN;
        END IF;
    END IF;
    INSERT INTO calls (call_id, owner, state, profile, inputs, caller, dialed, received_at, accepted_at, deadlines,
                       cost_usd, updated_at)
    VALUES (p_call_id, p_owner, p_state, p_profile, p_inputs, p_caller, p_dialed, p_received_at, p_accepted_at,
            p_deadlines, p_cost_usd, p_now)
    ON CONFLICT (call_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'exists'::text, NULL::text;
        RETURN;
    END IF;
    IF p_rate_limit > 0 THEN
        INSERT INTO caller_hits (key, at, expires_at) VALUES (p_rate_key, p_now, p_now + p_window_s);
    END IF;
    INSERT INTO outbox (key, call_id, destination, event, payload, created_at, due_at)
    SELECT o.key, o.call_id, o.destination, o.event, o.payload::jsonb, p_now, o.due_at
    FROM unnest(p_outbox_keys, p_outbox_call_ids, p_outbox_destinations, p_outbox_events, p_outbox_payloads, p_outbox_due)
        AS o(key, call_id, destination, event, payload, due_at)
    ON CONFLICT (key) DO NOTHING;
    RETURN QUERY SELECT 'admitted'::text, NULL::text;
END
$$;
