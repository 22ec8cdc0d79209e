-- 0001: claims, processes and their leases, calls and what they record, the outbox, caller hits.
-- Times are wall-clock seconds since the epoch (double precision), the same scale as the SQLite backend.

CREATE TABLE claims (
    key        text PRIMARY KEY,
    expires_at double precision NOT NULL
);
CREATE INDEX claims_expires_at ON claims (expires_at);

CREATE TABLE processes (
    process_id   text PRIMARY KEY,
    started_at   double precision NOT NULL,
    heartbeat_at double precision NOT NULL,
    lease_until  double precision NOT NULL,
    info         jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE calls (
    call_id        text PRIMARY KEY,
    owner          text NOT NULL,
    epoch          bigint NOT NULL DEFAULT 1,
    state          text NOT NULL,
    profile        text NOT NULL,
    inputs         jsonb NOT NULL,
    caller         text,
    dialed         text,
    received_at    double precision NOT NULL,
    accepted_at    double precision,
    deadlines      jsonb NOT NULL DEFAULT '{}',
    cost_usd       double precision NOT NULL DEFAULT 0,
    wake_at        double precision,
    takeovers      integer NOT NULL DEFAULT 0,
    takeover_gap_s double precision,
    entry_count    integer NOT NULL DEFAULT 0,
    updated_at     double precision NOT NULL,
    ended_at       double precision,
    ended_reason   text,
    report         jsonb
);
CREATE INDEX calls_live_by_owner ON calls (owner, received_at) WHERE ended_at IS NULL;
CREATE INDEX calls_live_by_state ON calls (state, wake_at) WHERE ended_at IS NULL;
CREATE INDEX calls_history ON calls (ended_at, call_id) WHERE ended_at IS NOT NULL;
CREATE INDEX calls_history_by_caller ON calls (caller, ended_at) WHERE ended_at IS NOT NULL;

CREATE TABLE call_entries (
    call_id text NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
    seq     integer NOT NULL,
    kind    text NOT NULL,
    at      double precision NOT NULL,
    data    jsonb NOT NULL,
    PRIMARY KEY (call_id, seq)
);

CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key          text NOT NULL UNIQUE,
    call_id      text,
    destination  text NOT NULL,
    event        text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   double precision NOT NULL,
    due_at       double precision NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    lease_owner  text,
    lease_until  double precision,
    last_error   text,
    delivered_at double precision,
    gave_up_at   double precision
);
CREATE INDEX outbox_pending ON outbox (due_at) WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX outbox_done ON outbox ((coalesce(delivered_at, gave_up_at)))
    WHERE delivered_at IS NOT NULL OR gave_up_at IS NOT NULL;

CREATE TABLE caller_hits (
    key        text NOT NULL,
    at         double precision NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX caller_hits_by_key ON caller_hits (key, at);
CREATE INDEX caller_hits_expires_at ON caller_hits (expires_at);

-- The two checks on the ring path that count then insert, each in ONE round trip: a transaction-scoped advisory
-- lock serialises them across replicas, and (PL/pgSQL, volatile) every statement after the lock takes a fresh
-- snapshot, so the count sees every row committed before the lock was granted.

CREATE FUNCTION sipctl_create_call(
    p_call_id text, p_owner text, p_state text, p_profile text, p_inputs jsonb, p_caller text, p_dialed text,
    p_received_at double precision, p_accepted_at double precision, p_deadlines jsonb, p_cost_usd double precision,
    p_now double precision, p_max_live bigint
) RETURNS SETOF calls LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('sipctl:live_calls:' || current_schema(), 0));
    IF (SELECT count(*) FROM calls WHERE ended_at IS NULL) >= p_max_live THEN
        RETURN;
    END IF;
    RETURN QUERY
        INSERT INTO calls (call_id, owner, state, profile, inputs, caller, dialed, received_at, accepted_at,
                           deadlines, cost_usd, updated_at)
        VALUES (p_call_id, p_owner, p_state, p_profile, p_inputs, p_caller, p_dialed, p_received_at, p_accepted_at,
                p_deadlines, p_cost_usd, p_now)
        ON CONFLICT (call_id) DO NOTHING
        RETURNING *;
END
$$;

CREATE FUNCTION sipctl_allow_caller(p_key text, p_limit bigint, p_now double precision, p_window_s double precision)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('sipctl:caller:' || current_schema() || ':' || p_key, 0));
    IF (SELECT count(*) FROM caller_hits WHERE key = p_key AND at > p_now - p_window_s) >= p_limit THEN
        RETURN false;
    END IF;
    INSERT INTO caller_hits (key, at, expires_at) VALUES (p_key, p_now, p_now + p_window_s);
    RETURN true;
END
$$;
