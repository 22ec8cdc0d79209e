-- 0010 (#16): Twilio's answering-machine verdict (its AMD callback) may reach a replica that does not own the call;
-- that replica posts it as a command of the kind machine_detected and the owner's command poller hands it to the
-- call, like an operator's hangup. SQLite cannot change a CHECK in place: the table is rebuilt with the wider one,
-- its rows, its AUTOINCREMENT counter and its indexes kept (as 0006 did).

CREATE TABLE call_commands_0010 (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id    TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('hangup', 'transfer', 'say', 'context', 'mute', 'unmute',
                                             'machine_detected')),
    args       TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    taken_by   TEXT,
    taken_at   REAL,
    done_at    REAL,
    outcome    TEXT
);
INSERT INTO call_commands_0010 (id, call_id, kind, args, created_at, taken_by, taken_at, done_at, outcome)
    SELECT id, call_id, kind, args, created_at, taken_by, taken_at, done_at, outcome FROM call_commands;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'call_commands_0010', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'call_commands_0010');
UPDATE sqlite_sequence
    SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'call_commands'), 0))
    WHERE name = 'call_commands_0010';
DROP TABLE call_commands;
ALTER TABLE call_commands_0010 RENAME TO call_commands;
CREATE INDEX call_commands_open ON call_commands (call_id, id) WHERE done_at IS NULL;
CREATE INDEX call_commands_created_at ON call_commands (created_at);
