-- Enrolments no longer carry the token: they name its MAC key by a 16-byte id
-- (SHA-256 of the stored key) and prove it with an HMAC, so the registry finds
-- the token by that id.
ALTER TABLE registry.tokens ADD COLUMN token_id bytea;
UPDATE registry.tokens SET token_id = substring(sha256(token_hash) FROM 1 FOR 16);
ALTER TABLE registry.tokens ALTER COLUMN token_id SET NOT NULL;
CREATE UNIQUE INDEX tokens_token_id ON registry.tokens (token_id);

-- An operator's rotate command may name the one new key it allows; without it,
-- the enrolment must carry a proof signed by the device's current key.
ALTER TABLE registry.rotations ADD COLUMN key_id bytea;

-- A signed deletion: the device record says 'deleted' and consumers forget it.
ALTER TABLE registry.devices DROP CONSTRAINT devices_status_check;
ALTER TABLE registry.devices ADD CONSTRAINT devices_status_check
    CHECK (status IN ('active', 'revoked', 'deregistered', 'deleted'));
