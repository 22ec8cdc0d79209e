-- 0001: claims, processes and their leases, calls and what they record, the outbox, caller hits.
-- Times are wall-clock seconds since the epoch (REAL); JSON columns are TEXT.

CREATE TABLE claims (
    key        TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX claims_expires_at ON claims (expires_at);

CREATE TABLE processes (
    process_id   TEXT PRIMARY KEY,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    lease_until  REAL NOT NULL,
    info         TEXT NOT NULL DEFAULT '{}'
) WITHOUT ROWID;

CREATE TABLE calls (
    call_id        TEXT PRIMARY KEY,
    owner          TEXT NOT NULL,
    epoch          INTEGER NOT NULL DEFAULT 1,
    state          TEXT NOT NULL,
    profile        TEXT NOT NULL,
    inputs         TEXT NOT NULL,
    caller         TEXT,
    dialed         TEXT,
    received_at    REAL NOT NULL,
    accepted_at    REAL,
    deadlines      TEXT NOT NULL DEFAULT '{}',
    cost_usd       REAL NOT NULL DEFAULT 0,
    wake_at        REAL,
    takeovers      INTEGER NOT NULL DEFAULT 0,
    takeover_gap_s REAL,
    entry_count    INTEGER NOT NULL DEFAULT 0,
    updated_at     REAL NOT NULL,
    ended_at       REAL,
    ended_reason   TEXT,
    report         TEXT
);
CREATE INDEX calls_live_by_owner ON calls (owner, received_at) WHERE ended_at IS NULL;
CREATE INDEX calls_live_by_state ON calls (state, wake_at) WHERE ended_at IS NULL;
CREATE INDEX calls_history ON calls (ended_at, call_id) WHERE ended_at IS NOT NULL;
CREATE INDEX calls_history_by_caller ON calls (caller, ended_at) WHERE ended_at IS NOT NULL;

CREATE TABLE call_entries (
    call_id TEXT NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    at      REAL NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (call_id, seq)
) WITHOUT ROWID;

CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    key          TEXT NOT NULL UNIQUE,
    call_id      TEXT,
    destination  TEXT NOT NULL,
    event        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   REAL NOT NULL,
    due_at       REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    lease_owner  TEXT,
    lease_until  REAL,
    last_error   TEXT,
    delivered_at REAL,
    gave_up_at   REAL
);
CREATE INDEX outbox_pending ON outbox (due_at) WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX outbox_done ON outbox (coalesce(delivered_at, gave_up_at))
    WHERE delivered_at IS NOT NULL OR gave_up_at IS NOT NULL;

CREATE TABLE caller_hits (
    key        TEXT NOT NULL,
    at         REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX caller_hits_by_key ON caller_hits (key, at);
CREATE INDEX caller_hits_expires_at ON caller_hits (expires_at);
