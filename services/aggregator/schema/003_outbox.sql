-- Transactional outbox: models, round results and audit events are written in
-- the transaction of the change they report, then sent and deleted. A crash in
-- between re-sends the identical signed bytes (same message id). `scope` is the
-- topic prefix, so aggregators of separate deployments sharing a database only
-- ever send their own records.
CREATE TABLE aggregator.outbox (
    seq   bigserial PRIMARY KEY,
    scope text NOT NULL,
    topic text NOT NULL,
    key   bytea,
    value bytea NOT NULL
);
CREATE INDEX outbox_scope ON aggregator.outbox (scope, seq);
