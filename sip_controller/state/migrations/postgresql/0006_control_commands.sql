-- 0006 (#17): live call control. Operator commands gain the kinds say, context, mute and unmute (posted by any
-- replica, carried out by the call's owner like a hangup or a transfer): the kind's CHECK is relaxed to them.

ALTER TABLE call_commands DROP CONSTRAINT IF EXISTS call_commands_kind_check;
ALTER TABLE call_commands ADD CONSTRAINT call_commands_kind_check
    CHECK (kind IN ('hangup', 'transfer', 'say', 'context', 'mute', 'unmute'));
