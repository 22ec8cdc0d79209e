-- 0003: Twilio calls (#16): each call Twilio answers on one of our numbers or places for us, bridged into OpenAI
-- with an opaque correlation id in an X- header. The OpenAI call_id is filled in when the realtime.call.incoming
-- webhook carrying that id arrives (once: a second call with the same id is not linked). Status callbacks update
-- status / answered_by / error_code and are appended to events. idempotency_key: POST /v1/outbound's header.

CREATE TABLE twilio_calls (
    id              text PRIMARY KEY,
    correlation     text NOT NULL UNIQUE,
    direction       text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    call_sid        text UNIQUE,
    idempotency_key text UNIQUE,
    request_hash    text,
    profile         text,
    from_number     text,
    to_number       text,
    variables       jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL,
    answered_by     text,
    error_code      integer,
    call_id         text,
    events          jsonb NOT NULL DEFAULT '[]',
    created_at      double precision NOT NULL,
    updated_at      double precision NOT NULL
);
CREATE INDEX twilio_calls_created_at ON twilio_calls (created_at);
