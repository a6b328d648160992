-- Server-owned weighting (qflare.fl.weighting). A round's rule is fixed when it opens: the policy,
-- the cap (k × the median declared size of its selected devices; NULL: none) and the declared
-- size of each selected device then, so a restart or a replay weights every update as before.
ALTER TABLE aggregator.rounds ADD COLUMN IF NOT EXISTS weighting jsonb;
-- An included update's weight is `num_examples`; `claimed` is what the device said it trained on.
ALTER TABLE aggregator.included ADD COLUMN IF NOT EXISTS claimed bigint;
-- The publication gate's refused rounds close "held" (the model version stays the round's base).
ALTER TABLE aggregator.rounds DROP CONSTRAINT IF EXISTS rounds_status_check;
ALTER TABLE aggregator.rounds ADD CONSTRAINT rounds_status_check
    CHECK (status IN ('open', 'completed', 'quorum_not_met', 'failed', 'held'));
