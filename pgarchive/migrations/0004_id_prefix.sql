-- The UI's id prefix filter (starts_with(saga_id, $1)). The primary key
-- serves a prefix only in a database whose collation is C; under any
-- other (en_US.UTF-8, ICU) the filter read every row. An index in
-- text_pattern_ops (byte order, whatever the collation) serves it in every
-- database, for the page and for the counts per status.
CREATE INDEX saga_sagas_id_prefix ON saga_sagas (saga_id text_pattern_ops);
