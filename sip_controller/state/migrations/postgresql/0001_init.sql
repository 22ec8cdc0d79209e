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
