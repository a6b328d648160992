-- Rounds and their checkpoint. `state` (the strategy's running fixed-point sum),
-- `stats`, the rows of `included` and the consumer positions in `offsets` are
-- written in one transaction per consumed batch, so after a kill -9 the
-- aggregator resumes from a state in which every update counted exactly once.
CREATE TABLE aggregator.rounds (
    job_id        text NOT NULL REFERENCES aggregator.jobs (job_id),
    round         bigint NOT NULL,
    -- Message id of the RoundTask, to tell a re-sent task from a conflicting one.
    task_id       bytea NOT NULL,
    model_version integer NOT NULL,
    strategy      text NOT NULL,
    devices       text[] NOT NULL,
    deadline_ms   bigint NOT NULL,
    min_updates   integer NOT NULL,
    config        jsonb NOT NULL,
    status        text NOT NULL CHECK (status IN ('open', 'completed', 'quorum_not_met', 'failed')),
    state         bytea,
    -- Per-round counters: bytes_in and rejected_<reason>.
    stats         jsonb NOT NULL DEFAULT '{}'::jsonb,
    result        jsonb,
    opened_at     timestamptz NOT NULL DEFAULT now(),
    closed_at     timestamptz,
    PRIMARY KEY (job_id, round)
);
CREATE INDEX rounds_open ON aggregator.rounds (job_id) WHERE status = 'open';

CREATE TABLE aggregator.included (
    job_id       text NOT NULL,
    round        bigint NOT NULL,
    device_id    text NOT NULL,
    message_id   bytea NOT NULL,
    num_examples bigint NOT NULL,
    -- The device's reported training loss (NULL when it sent none).
    loss         double precision,
    PRIMARY KEY (job_id, round, device_id),
    FOREIGN KEY (job_id, round) REFERENCES aggregator.rounds (job_id, round)
);

-- Where to resume each consumed partition. `resume_offset` is where to seek (the
-- first chunk of an update still being reassembled, else `next_offset`);
-- records below `next_offset` were handled and are only re-read for the chunks
-- of the streams listed in `open_streams`.
CREATE TABLE aggregator.offsets (
    topic         text NOT NULL,
    partition     integer NOT NULL,
    next_offset   bigint NOT NULL,
    resume_offset bigint NOT NULL,
    open_streams  jsonb NOT NULL DEFAULT '[]'::jsonb,
    PRIMARY KEY (topic, partition)
);
