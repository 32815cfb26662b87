-- jobkit server database: <base>/server.db on each host. Protocol: wrapper/README.md.
-- The client inserts a row (status 'queued') before launching the wrapper; the wrapper only
-- ever UPDATEs that row, so a missing row is detected (no_row) instead of silently created.
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS jobs (
    id              TEXT PRIMARY KEY NOT NULL
                    CHECK (length(id) BETWEEN 1 AND 64 AND id NOT GLOB '*[^A-Za-z0-9_-]*'),
    status          TEXT NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    exit_code       INTEGER,
    signal          TEXT,
    started_at      TEXT,
    started_epoch   INTEGER,
    completed_at    TEXT,
    completed_epoch INTEGER,
    pid             INTEGER,
    pgid            INTEGER,
    proc_start      INTEGER,
    boot_id         TEXT,
    user            TEXT,
    host            TEXT,
    token           TEXT,   -- the submission that inserted the row (the client's; never the wrapper's)
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
-- A database made by an older schema gets the columns added since (see jobkit.deploy).
