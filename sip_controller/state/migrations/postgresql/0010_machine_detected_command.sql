-- 0010 (#16): Twilio's answering-machine verdict (its AMD callback) may reach a replica that does not own the call;
-- that replica posts it as a command of the kind machine_detected and the owner's command poller hands it to the
-- call, like an operator's hangup. The kind's CHECK is widened to it.

ALTER TABLE call_commands DROP CONSTRAINT IF EXISTS call_commands_kind_check;
ALTER TABLE call_commands ADD CONSTRAINT call_commands_kind_check
    CHECK (kind IN ('hangup', 'transfer', 'say', 'context', 'mute', 'unmute', 'machine_detected'));
