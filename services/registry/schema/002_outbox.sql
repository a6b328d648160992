-- Transactional outbox: records to publish are written in the same transaction
-- as the state change they describe, then sent and deleted. A crash between
-- commit and send re-sends the identical signed bytes (same message id), which
-- receivers de-duplicate, so no device record or audit event is lost or doubled.
CREATE TABLE registry.outbox (
    seq   bigserial PRIMARY KEY,
    topic text NOT NULL,
    key   bytea,
    value bytea NOT NULL
);
