-- 0009 (#13, #14.11): the operator console's sign-in sessions and the wrong-token throttle, shared by every
-- replica (they lived in each process's memory: a request that reached another replica was signed out).
--   console_sessions  one row per session: key is the SHA-256 (hex) of the opaque id in the browser's cookie (the
--                     id itself is never stored), csrf the session's CSRF token, expires_at its end, last_seen_at
--                     written at most once a minute, revoked_at set by sign-out (or when the table is full: the
--                     oldest ends). Rows are swept once expired.
--   login_failures    wrong tokens per client key (an address, an IPv6 /64): how many, blocked_until (no token of
--                     the client's is looked at before it), forget_at (last failure + the quiet period after which
--                     the count starts again). Rows are swept once forgotten.

CREATE TABLE console_sessions (
    key          text PRIMARY KEY,
    csrf         text NOT NULL,
    created_at   double precision NOT NULL,
    expires_at   double precision NOT NULL,
    last_seen_at double precision NOT NULL,
    revoked_at   double precision
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
CREATE INDEX console_sessions_live ON console_sessions (created_at) WHERE revoked_at IS NULL;

CREATE TABLE login_failures (
    client         text PRIMARY KEY,
    failures       integer NOT NULL,
    last_failed_at double precision NOT NULL,
    blocked_until  double precision NOT NULL,
    forget_at      double precision NOT NULL
);
CREATE INDEX login_failures_forget ON login_failures (forget_at);
