-- Quarantine: a suspended device keeps its key (it still heartbeats) but is not
-- selected and its updates are refused, until an operator reinstates it.
ALTER TABLE registry.devices DROP CONSTRAINT devices_status_check;
ALTER TABLE registry.devices ADD CONSTRAINT devices_status_check
    CHECK (status IN ('active', 'suspended', 'revoked', 'deregistered', 'deleted'));
