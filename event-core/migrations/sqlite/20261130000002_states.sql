-- Current state of machines that keep no column of their own: one row per subject,
-- absent while the subject is still in its initial state.
CREATE TABLE herald_states (
    subject_type TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    state        TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (subject_type, subject_id)
) WITHOUT ROWID;
