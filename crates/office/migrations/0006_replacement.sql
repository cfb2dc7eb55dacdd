-- iccard back office, schema version 6: replacement of a lost card.
--
-- The balance of a lost card moves to its replacement as a load on the new card funded by the
-- old card's share of the float (no cash, no journal entry: both shares are inside `float`),
-- once the late-record window since the loss report has passed, so purchases the lost card made
-- before it was blocked have been uploaded and settled first. A pending load remembers which
-- card funds it.

ALTER TABLE pending_loads ADD COLUMN from_card_id BIGINT NULL REFERENCES cards (id);

CREATE TABLE card_transfers (
    operation_id BIGINT PRIMARY KEY REFERENCES operations (id),
    from_card_id BIGINT NOT NULL REFERENCES cards (id),
    to_card_id BIGINT NOT NULL REFERENCES cards (id),
    amount_minor BIGINT NOT NULL CHECK (amount_minor >= 0),
    at_ms BIGINT NOT NULL,
    CHECK (from_card_id <> to_card_id)
);

INSERT INTO office_settings (name, value) VALUES ('late_record_window_days', '7');
