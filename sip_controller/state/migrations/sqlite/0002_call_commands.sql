-- 0002: operator commands (hangup, transfer) for a live call, posted by any replica and carried out by the call's
-- owner. A command is taken by the owning process (taken_by), then marked done with an outcome. One taken but
-- not done by a process that no longer owns the call is offered again to the new owner.

CREATE TABLE call_commands (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id    TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('hangup', 'transfer')),
    args       TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    taken_by   TEXT,
    taken_at   REAL,
    done_at    REAL,
    outcome    TEXT
);
CREATE INDEX call_commands_open ON call_commands (call_id, id) WHERE done_at IS NULL;
CREATE INDEX call_commands_created_at ON call_commands (created_at);
