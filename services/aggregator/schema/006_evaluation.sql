-- Federated evaluation: a device's evaluation of the round's model version, as the
-- `eval_*` metrics of its reply (NULL when it sent none). Written with the rest of the
-- included row, so a restart combines exactly the evaluations the round counted.
ALTER TABLE aggregator.included ADD COLUMN evaluation jsonb;
