-- 0007 (#16): outbound call batches. A batch holds its settings (profile, pacing, calling hours, retries) and the
-- rows refused when it was created; each good row is a row of outbound_batch_rows, claimed with a lease by whichever
-- replica's dialler (queued -> placing -> in_flight -> done, or back to queued for a retry or outside calling hours).
-- next_slot_at paces the batch across the cluster (calls_per_second); max_in_flight bounds its placing + in_flight
-- rows. twilio_id is the Twilio call of the current attempt (twilio_calls.id); attempt numbers the calls placed for
-- the row, and the attempt's Idempotency-Key is derived from it, so a row re-claimed after a crash is never placed
-- twice.

CREATE TABLE outbound_batches (
    id               TEXT PRIMARY KEY,
    idempotency_key  TEXT UNIQUE,
    request_hash     TEXT,
    profile          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('running', 'paused', 'canceled', 'done')),
    calls_per_second REAL NOT NULL CHECK (calls_per_second > 0),
    max_in_flight    INTEGER NOT NULL CHECK (max_in_flight > 0),
    next_slot_at     REAL NOT NULL,
    options          TEXT NOT NULL DEFAULT '{}',
    rejected         TEXT NOT NULL DEFAULT '[]',
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL
);
CREATE INDEX outbound_batches_status ON outbound_batches (status);

CREATE TABLE outbound_batch_rows (
    batch_id    TEXT NOT NULL REFERENCES outbound_batches (id) ON DELETE CASCADE,
    row_no      INTEGER NOT NULL,
    to_number   TEXT NOT NULL,
    variables   TEXT NOT NULL DEFAULT '{}',
    timezone    TEXT,
    state       TEXT NOT NULL CHECK (state IN ('queued', 'placing', 'in_flight', 'done', 'canceled')),
    outcome     TEXT,
    attempt     INTEGER NOT NULL DEFAULT 0,
    claims      INTEGER NOT NULL DEFAULT 0,
    due_at      REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    twilio_id   TEXT,
    last_error  TEXT,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (batch_id, row_no)
) WITHOUT ROWID;
CREATE INDEX outbound_batch_rows_state ON outbound_batch_rows (state, due_at);
CREATE INDEX outbound_batch_rows_batch_state ON outbound_batch_rows (batch_id, state);
