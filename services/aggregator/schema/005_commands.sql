-- Job commands already applied, by (sender, message id): a copy of a command
-- re-published at another offset, or replayed after a restart, is refused.
-- Rows older than the command age limit are pruned: such a copy is refused as expired.
CREATE TABLE IF NOT EXISTS aggregator.applied_commands (
    sender text NOT NULL,
    message_id bytea NOT NULL,
    ts_ms bigint NOT NULL,
    PRIMARY KEY (sender, message_id)
);
CREATE INDEX IF NOT EXISTS applied_commands_ts ON aggregator.applied_commands (ts_ms);
