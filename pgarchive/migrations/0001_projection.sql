-- The projection: one row per saga, one per commit (its exact bytes, so
-- that an archived history is the history), one per event (for people
-- and queries).
CREATE TABLE saga_sagas (
    saga_id       text PRIMARY KEY,
    workflow_type text        NOT NULL,
    version       integer     NOT NULL,
    status        text        NOT NULL,
    -- running, completed, failed or skipped; NULL when nothing was
    -- registered to undo.
    compensation  text,
    started_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    closed_at     timestamptz,
    input         jsonb,
    output        jsonb,
    error         jsonb,
    open_timers   integer     NOT NULL DEFAULT 0,
    next_timer_at timestamptz,
    -- events is the next event id; last_seq the stream sequence of the
    -- last commit applied.
    events        bigint      NOT NULL,
    last_seq      bigint      NOT NULL,
    archived_at   timestamptz
);

-- list filters: newest first, keyset on (started_at, saga_id).
CREATE INDEX saga_sagas_started ON saga_sagas (started_at DESC, saga_id DESC);
CREATE INDEX saga_sagas_status ON saga_sagas (status, started_at DESC, saga_id DESC);
CREATE INDEX saga_sagas_type ON saga_sagas (workflow_type, started_at DESC, saga_id DESC);
CREATE INDEX saga_sagas_type_status ON saga_sagas (workflow_type, status, started_at DESC, saga_id DESC);
CREATE INDEX saga_sagas_compensation ON saga_sagas (compensation, started_at DESC, saga_id DESC) WHERE compensation IS NOT NULL;
CREATE INDEX saga_sagas_timers ON saga_sagas (next_timer_at) WHERE open_timers > 0;
-- archive candidates: ended, not archived, oldest first.
CREATE INDEX saga_sagas_archivable ON saga_sagas (closed_at) WHERE closed_at IS NOT NULL AND archived_at IS NULL;

CREATE TABLE saga_commits (
    saga_id        text   NOT NULL,
    seq            bigint NOT NULL,
    first_event_id bigint NOT NULL,
    data           bytea  NOT NULL,
    PRIMARY KEY (saga_id, first_event_id)
);

CREATE TABLE saga_events (
    saga_id    text        NOT NULL,
    event_id   bigint      NOT NULL,
    seq        bigint      NOT NULL,
    type       text        NOT NULL,
    category   text        NOT NULL,
    time       timestamptz NOT NULL,
    attributes jsonb       NOT NULL,
    PRIMARY KEY (saga_id, event_id)
);
