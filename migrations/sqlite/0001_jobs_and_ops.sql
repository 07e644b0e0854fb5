-- Jobs and ops of the contentdownload ledger (SQLite). Times are Unix milliseconds.
-- Every statement is idempotent (IF NOT EXISTS), so a half-applied or repeated run is harmless.
CREATE TABLE IF NOT EXISTS jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id           TEXT    NOT NULL,
    work_id          TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL UNIQUE,
    canonical_url    TEXT    NOT NULL,
    state            TEXT    NOT NULL
        CHECK (state IN ('PLANNED', 'LEASED', 'FINALIZED', 'FAILED', 'DEFERRED', 'SKIPPED')),
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    outcome          TEXT,
    path             TEXT,
    sha256           TEXT,
    bytes            INTEGER,
    reason           TEXT
);
CREATE INDEX IF NOT EXISTS jobs_run_state ON jobs (run_id, state, id);
CREATE INDEX IF NOT EXISTS jobs_state_lease ON jobs (state, lease_expires_at);

CREATE TABLE IF NOT EXISTS ops (
    op_key      TEXT    PRIMARY KEY,
    job_id      INTEGER NOT NULL REFERENCES jobs (id),
    kind        TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('STARTED', 'FINISHED', 'ABANDONED')),
    owner       TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    result      TEXT
);
CREATE INDEX IF NOT EXISTS ops_status_started ON ops (status, started_at);
CREATE INDEX IF NOT EXISTS ops_job ON ops (job_id);
