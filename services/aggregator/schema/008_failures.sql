-- Failed replies: a device that could not train answers its round with a `round_failure`.
-- It is stored as an `included` row with the failure's reason (NULL for an update), so a
-- restart knows which devices answered, and that a failure is not an update.
ALTER TABLE aggregator.included ADD COLUMN failure text;
