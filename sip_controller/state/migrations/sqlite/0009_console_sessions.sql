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
    key          TEXT PRIMARY KEY,
    csrf         TEXT NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    revoked_at   REAL
) WITHOUT ROWID;
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
CREATE INDEX console_sessions_live ON console_sessions (created_at) WHERE revoked_at IS NULL;

CREATE TABLE login_failures (
    client         TEXT PRIMARY KEY,
    failures       INTEGER NOT NULL,
    last_failed_at REAL NOT NULL,
    blocked_until  REAL NOT NULL,
    forget_at      REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX login_failures_forget ON login_failures (forget_at);
