-- Personalised FL (Ditto, FedPer): each device reports the accuracy of its own personal model on
-- its own held-out data. It is kept per included update so the round's summary (mean and
-- worst-decile device) is the same after a restart.
ALTER TABLE aggregator.included ADD COLUMN IF NOT EXISTS personal_accuracy double precision;
