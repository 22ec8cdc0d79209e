-- 0003: Twilio calls (#16): each call Twilio answers on one of our numbers or places for us, bridged into OpenAI
-- with an opaque correlation id in an X- header. The OpenAI call_id is filled in when the realtime.call.incoming
-- webhook carrying that id arrives (once: a second call with the same id is not linked). Status callbacks update
-- status / answered_by / error_code and are appended to events. idempotency_key: POST /v1/outbound's header.

CREATE TABLE twilio_calls (
    id              TEXT PRIMARY KEY,
    correlation     TEXT NOT NULL UNIQUE,
    direction       TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    call_sid        TEXT UNIQUE,
    idempotency_key TEXT UNIQUE,
    request_hash    TEXT,
    profile         TEXT,
    from_number     TEXT,
    to_number       TEXT,
    variables       TEXT NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL,
    answered_by     TEXT,
    error_code      INTEGER,
    call_id         TEXT,
    events          TEXT NOT NULL DEFAULT '[]',
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE INDEX twilio_calls_created_at ON twilio_calls (created_at);
