-- Anomaly flags of buffered rounds, and the quarantine requests they led to.
-- One row per scored update: the round it was scored in, whether the flag rule
-- (qflare.fl.anomaly.flag_updates) flagged it, and by which rules ("norm,cosine",
-- or ""). Written in the transaction that closes the round, with its
-- update.scored audit events. A device flagged in quarantine_k of its last
-- quarantine_m scored rounds is due for quarantine.
CREATE TABLE IF NOT EXISTS aggregator.flag_history (
    job_id    text NOT NULL,
    device_id text NOT NULL,
    round     bigint NOT NULL,
    flagged   boolean NOT NULL,
    flags     text NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, device_id, round)
);

-- The suspend commands the aggregator queued for the registry: at most one per job
-- and device. `message_id` is the signed command's, `rounds` the rounds it was
-- flagged in within the window.
CREATE TABLE IF NOT EXISTS aggregator.quarantine_requests (
    job_id       text NOT NULL,
    device_id    text NOT NULL,
    round        bigint NOT NULL,
    rounds       text NOT NULL,
    reason       text NOT NULL,
    message_id   bytea NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, device_id)
);
