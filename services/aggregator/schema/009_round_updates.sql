-- Buffered strategies (robust aggregators, FedNova) need every update of a round at close,
-- not a running sum. Each accepted update of such a round is kept here, written in the same
-- transaction as its `included` row and its partition's offset, so after a kill -9 the round
-- resumes with exactly the updates it counted. `payload` is the update's device id, example
-- count, metrics and tensor groups (qflare.fl.buffer.encode_update). The rows go when the
-- round closes.
CREATE TABLE IF NOT EXISTS aggregator.round_updates (
    job_id    text NOT NULL,
    round     bigint NOT NULL,
    device_id text NOT NULL,
    payload   bytea NOT NULL,
    PRIMARY KEY (job_id, round, device_id),
    FOREIGN KEY (job_id, round, device_id) REFERENCES aggregator.included (job_id, round, device_id)
);
