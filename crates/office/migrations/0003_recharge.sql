-- iccard back office, schema version 3: recharges on real cards.
--
-- A load done at a recharge point on the card itself keeps the card's own record beside the
-- posting: the terminal id and the date and time sent to the card, the card type (product
-- code), the balance after, the card's TAC and whether the keystore verified it, and how the
-- load ended when it was finished after an interruption. Loads posted without a card (the
-- foundations' `load_card`) leave these NULL.

ALTER TABLE card_loads ADD COLUMN terminal_id TEXT NULL;
ALTER TABLE card_loads ADD COLUMN tx_date TEXT NULL;
ALTER TABLE card_loads ADD COLUMN tx_time TEXT NULL;
ALTER TABLE card_loads ADD COLUMN card_type TEXT NULL;
ALTER TABLE card_loads ADD COLUMN balance_after_minor BIGINT NULL;
ALTER TABLE card_loads ADD COLUMN tac TEXT NULL;
ALTER TABLE card_loads ADD COLUMN tac_verified BIGINT NULL CHECK (tac_verified IN (0, 1));
ALTER TABLE card_loads ADD COLUMN recovery TEXT NULL;

-- A load whose CREDIT FOR LOAD was sent (or was about to be) and whose answer is not in yet.
-- At most one per card: the card's online serial decides, on the next contact, whether it
-- happened (posted then, exactly once) or not (removed; the cash goes back to the customer).
-- `record` is the terminal's pending transaction (JSON): everything recovery needs.
CREATE TABLE pending_loads (
    card_id BIGINT PRIMARY KEY REFERENCES cards (id),
    online_serial BIGINT NOT NULL CHECK (online_serial >= 0),
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    record TEXT NOT NULL,
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    machine_id BIGINT NOT NULL REFERENCES machines (id),
    started_at_ms BIGINT NOT NULL
);
