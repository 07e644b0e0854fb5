-- Resolver answers remembered (PostgreSQL): each resolver's answer for a work, so that a rerun
-- or the second pass within the cache's age asks no provider twice. Times are Unix milliseconds.
-- `answer` is the JSON list of candidates (`[]`: the resolver found nothing); errors are never
-- stored. `found_pdf` is 1 when the work's PDF came from one of this answer's candidates.
CREATE TABLE IF NOT EXISTS resolver_answers (
    work_id     TEXT   NOT NULL,
    resolver    TEXT   NOT NULL,
    answer      TEXT   NOT NULL,
    candidates  BIGINT NOT NULL,
    found_pdf   BIGINT NOT NULL DEFAULT 0,
    answered_at BIGINT NOT NULL,
    PRIMARY KEY (work_id, resolver)
);
CREATE INDEX IF NOT EXISTS resolver_answers_resolver ON resolver_answers (resolver);
