-- The model store: models an operator imported (the stored_model body exactly as
-- it is re-encoded, and its SHA-256). A name and version are immutable: the same
-- content again is a no-op, other content is refused. `scope` is the topic prefix,
-- so deployments sharing a database keep separate stores.
CREATE TABLE IF NOT EXISTS aggregator.model_store (
    scope      text NOT NULL,
    name       text NOT NULL,
    version    text NOT NULL,
    format     text NOT NULL,
    digest     bytea NOT NULL,
    body       bytea NOT NULL,
    sender     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, name, version)
);
