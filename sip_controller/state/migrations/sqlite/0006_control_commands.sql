-- 0006 (#17): live call control. Operator commands gain the kinds say, context, mute and unmute (posted by any
-- replica, carried out by the call's owner like a hangup or a transfer). SQLite cannot change a CHECK in place:
-- the table is rebuilt with the wider one, its rows, its AUTOINCREMENT counter and its indexes kept.

CREATE TABLE call_commands_0006 (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id    TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('hangup', 'transfer', 'say', 'context', 'mute', 'unmute')),
    args       TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    taken_by   TEXT,
    taken_at   REAL,
    done_at    REAL,
    outcome    TEXT
);
INSERT INTO call_commands_0006 (id, call_id, kind, args, created_at, taken_by, taken_at, done_at, outcome)
    SELECT id, call_id, kind, args, created_at, taken_by, taken_at, done_at, outcome FROM call_commands;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'call_commands_0006', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'call_commands_0006');
UPDATE sqlite_sequence
    SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'call_commands'), 0))
    WHERE name = 'call_commands_0006';
DROP TABLE call_commands;
ALTER TABLE call_commands_0006 RENAME TO call_commands;
CREATE INDEX call_commands_open ON call_commands (call_id, id) WHERE done_at IS NULL;
CREATE INDEX call_commands_created_at ON call_commands (created_at);
