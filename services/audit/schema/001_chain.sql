-- The audit log: one hash chain per stream (the topic prefix of a deployment).
-- Each entry's `hash` covers the previous entry's hash, its own seq and the
-- digest of its fields (services.audit.chain), so modifying, deleting or
-- reordering any entry breaks every later link. Checkpoint entries carry an
-- ML-DSA signature (by the audit service's key) over their own hash.
CREATE TABLE audit.chain (
    stream           text NOT NULL,
    seq              bigint NOT NULL CHECK (seq >= 1),
    prev_hash        bytea NOT NULL,
    event_digest     bytea NOT NULL,
    hash             bytea NOT NULL,
    time_ms          bigint NOT NULL,
    actor            text NOT NULL,
    round            bigint,
    job              text,
    type             text NOT NULL,
    outcome          text NOT NULL CHECK (outcome IN ('accepted', 'rejected', 'info')),
    reason           text NOT NULL DEFAULT '',
    subject          text,
    ref_id           bytea,
    source_topic     text NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint NOT NULL,
    detail           jsonb NOT NULL DEFAULT '{}'::jsonb,
    signature        bytea,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, seq)
);
CREATE INDEX chain_round ON audit.chain (stream, round);
CREATE INDEX chain_subject ON audit.chain (stream, subject);
CREATE INDEX chain_type ON audit.chain (stream, type);

-- Where to resume each consumed partition, written in the transaction that
-- appends the entries of the records before it: nothing lost or doubled.
CREATE TABLE audit.offsets (
    stream      text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (stream, topic, partition)
);

-- Elasticsearch is derived: the highest seq known to be indexed, per stream.
CREATE TABLE audit.indexed (
    stream  text PRIMARY KEY,
    seq     bigint NOT NULL
);
