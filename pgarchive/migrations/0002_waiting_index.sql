-- list --waiting-on-timer: newest first among the running sagas with an
-- open timer, one page read. saga_sagas_timers (on next_timer_at) is an
-- order nothing lists by.
CREATE INDEX saga_sagas_waiting ON saga_sagas (started_at DESC, saga_id DESC) WHERE open_timers > 0 AND status = 'running';
DROP INDEX saga_sagas_timers;
