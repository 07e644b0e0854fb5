-- The lease index, smaller (PostgreSQL; the SQLite ledger's 0003 does the same). Idempotent.
--
-- `(state, lease_expires_at)` held every job, so each finish moved its entry and the index
-- grew with the ledger. The queries that need it ask for LEASED jobs (of an owner; past
-- their lease) or for PLANNED ones in id order; two partial indexes hold just those rows,
-- so a finish only deletes the job's entry and a claim of a new job inserts one. A third holds
-- the DEFERRED jobs by reason, for `status`'s count of them (which the dropped index served).
DROP INDEX IF EXISTS jobs_state_lease;
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (lease_expires_at) WHERE state = 'LEASED';
CREATE INDEX IF NOT EXISTS jobs_planned ON jobs (id) WHERE state = 'PLANNED';
CREATE INDEX IF NOT EXISTS jobs_deferred ON jobs (reason) WHERE state = 'DEFERRED';
