-- iccard back office, schema version 5: issuance.
--
-- An issuance job is committed before the first personalization APDU reaches the card and ends
-- `done` (the card issued, its account opened, in the same transaction) or `rolled_back` (the
-- card voided with the reason). A job still `personalizing` is an interrupted personalization:
-- the next attempt with the same chip settles it from the card's own state.

INSERT INTO counters (name, value) VALUES ('card_number', 0), ('issuance_job', 0);

CREATE TABLE issuance_jobs (
    id BIGINT PRIMARY KEY,
    chip_serial TEXT NOT NULL,
    card_number TEXT NOT NULL UNIQUE,
    product_id BIGINT NOT NULL REFERENCES products (id),
    product_version BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('personalizing', 'done', 'rolled_back')),
    card_id BIGINT NULL REFERENCES cards (id),
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    machine_id BIGINT NOT NULL REFERENCES machines (id),
    started_at_ms BIGINT NOT NULL,
    finished_at_ms BIGINT NULL,
    note TEXT NOT NULL,
    CHECK (state <> 'done' OR card_id IS NOT NULL)
);
CREATE INDEX issuance_jobs_chip ON issuance_jobs (chip_serial, state);

-- The holder of a registered card.
CREATE TABLE card_holders (
    card_id BIGINT PRIMARY KEY REFERENCES cards (id),
    name TEXT NOT NULL,
    id_number TEXT NOT NULL,
    recorded_at_ms BIGINT NOT NULL,
    operation_id BIGINT NOT NULL REFERENCES operations (id)
);
