-- The highest fencing token of the round tasks accepted for each job: a task
-- from a scheduler leader that has since been replaced (a lower token) is refused.
ALTER TABLE aggregator.jobs ADD COLUMN IF NOT EXISTS fencing_token bigint NOT NULL DEFAULT 0;
