-- 0002: operator commands (hangup, transfer) for a live call, posted by any replica and carried out by the call's
-- owner. A command is taken by the owning process (taken_by), then marked done with an outcome. One taken but
-- not done by a process that no longer owns the call is offered again to the new owner.

CREATE TABLE call_commands (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id    text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('hangup', 'transfer')),
    args       jsonb NOT NULL DEFAULT '{}',
    created_at double precision NOT NULL,
    taken_by   text,
    taken_at   double precision,
    done_at    double precision,
    outcome    text
);
CREATE INDEX call_commands_open ON call_commands (call_id, id) WHERE done_at IS NULL;
CREATE INDEX call_commands_created_at ON call_commands (created_at);
