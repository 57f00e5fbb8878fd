-- Runs (continue-as-new): the row describes a saga's latest run. run is
-- its number, run_seq the stream sequence of the commit that starts it:
-- the row is computed again from that commit on, not from the saga's
-- first, so that a saga that continues as new for ever costs the
-- projection its latest run, not its whole history.
ALTER TABLE saga_sagas
    ADD COLUMN run     integer NOT NULL DEFAULT 1,
    ADD COLUMN run_seq bigint  NOT NULL DEFAULT 0;
