-- The registry's source of truth: devices with their pinned public keys,
-- single-use enrolment tokens, and operator-authorised key rotations.
CREATE TABLE registry.devices (
    device_id   text PRIMARY KEY,
    key_id      bytea NOT NULL,
    public_key  bytea NOT NULL,
    status      text NOT NULL CHECK (status IN ('active', 'revoked', 'deregistered')),
    labels      jsonb NOT NULL DEFAULT '{}'::jsonb,
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Bumped on every change; consumers of the device topic keep the highest.
    revision    bigint NOT NULL DEFAULT 1
);

CREATE TABLE registry.tokens (
    token_hash  bytea PRIMARY KEY,
    expires_at  timestamptz NOT NULL,
    labels      jsonb NOT NULL DEFAULT '{}'::jsonb,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    used_at     timestamptz,
    used_by     text,
    used_key_id bytea
);

CREATE TABLE registry.rotations (
    device_id     text PRIMARY KEY,
    authorized_at timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);

-- Operator commands already applied, so a re-delivered command is a no-op.
CREATE TABLE registry.applied_commands (
    sender     text NOT NULL,
    message_id bytea NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sender, message_id)
);
