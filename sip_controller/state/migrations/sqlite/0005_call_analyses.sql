-- 0005 (#17): post-call analyses. One row per analysed call: pending (claimed with a lease like an outbox row,
-- each claim an attempt, due again at due_at after a failure) until done (result: the analysis document, cost_usd)
-- or failed for good (result and last_error say why). Kept with the call. (0004 is #18's.)

CREATE TABLE call_analyses (
    call_id     TEXT PRIMARY KEY REFERENCES calls (call_id) ON DELETE CASCADE,
    profile     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    due_at      REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_error  TEXT,
    result      TEXT,
    cost_usd    REAL,
    finished_at REAL
) WITHOUT ROWID;
CREATE INDEX call_analyses_pending ON call_analyses (due_at) WHERE status = 'pending';
