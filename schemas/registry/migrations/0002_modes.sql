-- Modes: READONLY stops registrations and deletions (a freeze during an incident or a
-- migration); subject '' is the global mode. No row: READWRITE.
CREATE TABLE registry_mode (
    subject  text PRIMARY KEY,
    mode     text NOT NULL CHECK (mode IN ('READWRITE', 'READONLY'))
);
