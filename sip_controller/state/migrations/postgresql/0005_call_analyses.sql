-- 0005 (#17): post-call analyses. One row per analysed call: pending (claimed with a lease like an outbox row,
-- each claim an attempt, due again at due_at after a failure) until done (result: the analysis document, cost_usd)
-- or failed for good (result and last_error say why). Kept with the call. (0004 is #18's.)

CREATE TABLE call_analyses (
    call_id     text PRIMARY KEY REFERENCES calls (call_id) ON DELETE CASCADE,
    profile     text NOT NULL,
    status      text NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts    integer NOT NULL DEFAULT 0,
    created_at  double precision NOT NULL,
    due_at      double precision NOT NULL,
    lease_owner text,
    lease_until double precision,
    last_error  text,
    result      jsonb,
    cost_usd    double precision,
    finished_at double precision
);
CREATE INDEX call_analyses_pending ON call_analyses (due_at) WHERE status = 'pending';
