-- Cheaper checks on the per-file writes (SQLite). Idempotent: run twice, it changes nothing more.
--
-- SQLite evaluates `x IN ('a', 'b', 'c', ...)` (more than two constants) by filling a
-- temporary index with the constants and looking `x` up in it. In a query that index is
-- built once; in a CHECK constraint it is built again for every row written, so the
-- `state IN (six states)` of `jobs` cost six b-tree inserts per claim and six per finish:
-- about 24k instructions per file of a bulk run (callgrind, SQLite's shell on 2,000
-- claims and finishes in groups of 64: 315.3M with the IN list, 266.3M with the same
-- condition as a chain of `=`). The chain accepts exactly the same values.
--
-- A CHECK cannot be altered in place; SQLite documents this edit of the stored schema text
-- for changes that leave the file's content as it is (removing or changing a CHECK whose
-- rows all satisfy the new one): https://www.sqlite.org/lang_altertable.html#otheralter.
-- `replace` only matches the text 0001 wrote, so a second run finds nothing to replace.
-- `writable_schema = RESET` turns editing off and makes this connection read the schema
-- again; the `CREATE INDEX` below changes the schema cookie, so every other connection
-- (the readers, other processes) reads it again too.
PRAGMA writable_schema = ON;
UPDATE sqlite_master
SET sql = replace(
        replace(
            sql,
            'CHECK (state IN (''PLANNED'', ''LEASED'', ''FINALIZED'', ''FAILED'', ''DEFERRED'', ''SKIPPED''))',
            'CHECK (state = ''LEASED'' OR state = ''FINALIZED'' OR state = ''FAILED'' OR state = ''PLANNED'' OR state = ''DEFERRED'' OR state = ''SKIPPED'')'
        ),
        'CHECK (status IN (''STARTED'', ''FINISHED'', ''ABANDONED''))',
        'CHECK (status = ''STARTED'' OR status = ''FINISHED'' OR status = ''ABANDONED'')'
    )
WHERE type = 'table' AND name IN ('jobs', 'ops');
PRAGMA writable_schema = RESET;

-- The lease index, smaller: `(state, lease_expires_at)` held every job, so each finish
-- moved its entry (a delete and an insert) and the index grew with the ledger. The
-- queries that need it ask for LEASED jobs (of an owner; past their lease) or for PLANNED
-- ones in id order; two partial indexes hold just those rows, so a finish only deletes the
-- job's entry and a claim of a new job inserts one. A third holds the DEFERRED jobs by reason,
-- for `status`'s count of them (which the dropped index served): few rows, and a job that
-- is finished or failed is never in it.
DROP INDEX IF EXISTS jobs_state_lease;
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (lease_expires_at) WHERE state = 'LEASED';
CREATE INDEX IF NOT EXISTS jobs_planned ON jobs (id) WHERE state = 'PLANNED';
CREATE INDEX IF NOT EXISTS jobs_deferred ON jobs (reason) WHERE state = 'DEFERRED';
