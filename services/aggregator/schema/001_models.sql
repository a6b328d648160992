-- Jobs and the model store. A model version is the GlobalModel body exactly as
-- it was published (msgpack), so `digest` (its SHA-256) is the RoundComplete
-- `model_digest` and anyone holding the published model can check it.
CREATE TABLE aggregator.jobs (
    job_id         text PRIMARY KEY,
    -- The topic prefix of the deployment that runs the job: aggregators of
    -- separate deployments may share a database but never each other's jobs.
    scope          text NOT NULL,
    config         jsonb NOT NULL,
    status         text NOT NULL CHECK (status IN ('running', 'paused', 'stopped')),
    -- StrategyState between rounds (e.g. server optimiser moments); empty for FedAvg.
    strategy_state bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE aggregator.models (
    job_id     text NOT NULL REFERENCES aggregator.jobs (job_id),
    version    integer NOT NULL CHECK (version >= 0),
    parent     integer,
    round      bigint,
    metrics    jsonb NOT NULL DEFAULT '{}'::jsonb,
    digest     bytea NOT NULL,
    weights    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, version)
);
