-- iccard back office, schema version 4: card status and the loss list.
--
-- `cards` keeps the money (shadow accounts); `card_status` what the issuer says of the card:
-- active, lost (on the loss list), replaced (its balance moved to another card), returned
-- (refunded and taken back), expired. Every change also appends a `card_history` row.
--
-- The loss list is versioned: every change (a card added or removed) is a new version, so a
-- terminal that holds version N downloads only the changes after N. The list at version N is
-- every card whose latest change at or below N is an addition.

INSERT INTO counters (name, value) VALUES ('loss_list', 0);

CREATE TABLE card_status (
    card_id BIGINT PRIMARY KEY REFERENCES cards (id),
    status TEXT NOT NULL CHECK (status IN ('active', 'lost', 'replaced', 'returned', 'expired')),
    since_ms BIGINT NOT NULL,
    replaced_by_card_id BIGINT NULL REFERENCES cards (id),
    CHECK (status <> 'replaced' OR replaced_by_card_id IS NOT NULL)
);

INSERT INTO card_status (card_id, status, since_ms)
    SELECT id, 'active', opened_at_ms FROM cards;

CREATE TABLE loss_list (
    version BIGINT PRIMARY KEY CHECK (version >= 1),
    card_id BIGINT NOT NULL REFERENCES cards (id),
    application_serial TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('add', 'remove')),
    reason TEXT NOT NULL,
    operation_id BIGINT NOT NULL REFERENCES operations (id),
    at_ms BIGINT NOT NULL
);
CREATE INDEX loss_list_card ON loss_list (card_id, version);
