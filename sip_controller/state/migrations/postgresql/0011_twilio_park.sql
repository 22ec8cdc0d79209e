-- 0011 (#16): a Twilio call parked on a long hold. Its OpenAI leg ended (that call's row: ended_reason 'parked', a
-- report of its own) while Twilio keeps the line; park holds what the controller needs to bridge a new OpenAI leg
-- when a person is back, or to close the parked leg's row with the final report when the call ends parked. Opaque
-- JSON to the store (jsonb, as variables and events); NULL when the call is not parked.

ALTER TABLE twilio_calls ADD COLUMN park jsonb;
