-- iccard back office, schema version 7: the return of a card.
--
-- A holder hands a card back at a recharge point. The office quotes the refund from rules (the
-- card's own balance, proven by the card's MAC1; the deposit held, refunded for an undamaged
-- card and forfeited for a damaged one; the return fee setting, never more than the refund),
-- unloads the purse on the card (DEBIT FOR UNLOAD, MAC3 and TAC verified), pays the refund in
-- cash and posts Dr float + Dr deposits held / Cr cash + Cr fee income; then blocks the purse
-- for good and either terminates the card (destroyed) or erases it for refurbishment.
--
-- `card_returns` is the journal of each return: committed before DEBIT FOR UNLOAD leaves
-- (`unloading`, with the terminal's pending record), posted (`unloaded`), done on the card
-- (`finished`). At most one open return per card. An interrupted return resumes from its state
-- on the next contact; an unload the card never executed is cancelled (the row goes).

INSERT INTO office_settings (name, value) VALUES ('return_fee_minor', '0');

CREATE TABLE card_returns (
    id BIGINT PRIMARY KEY,
    card_id BIGINT NOT NULL REFERENCES cards (id),
    state TEXT NOT NULL CHECK (state IN ('unloading', 'unloaded', 'finished')),
    condition TEXT NOT NULL CHECK (condition IN ('good', 'damaged')),
    disposition TEXT NOT NULL CHECK (disposition IN ('refurbish', 'destroy')),
    chip_serial TEXT NULL,
    card_balance_minor BIGINT NOT NULL CHECK (card_balance_minor >= 0),
    deposit_refund_minor BIGINT NOT NULL CHECK (deposit_refund_minor >= 0),
    deposit_forfeit_minor BIGINT NOT NULL CHECK (deposit_forfeit_minor >= 0),
    fee_minor BIGINT NOT NULL CHECK (fee_minor >= 0),
    refund_minor BIGINT NOT NULL CHECK (refund_minor >= 0),
    online_serial BIGINT NOT NULL CHECK (online_serial >= 0),
    record TEXT NULL,
    tac TEXT NULL,
    tac_verified BIGINT NULL CHECK (tac_verified IN (0, 1)),
    recovery TEXT NULL,
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    machine_id BIGINT NOT NULL REFERENCES machines (id),
    started_at_ms BIGINT NOT NULL,
    posted_operation_id BIGINT NULL REFERENCES operations (id),
    finished_at_ms BIGINT NULL,
    CHECK (card_balance_minor + deposit_refund_minor = refund_minor + fee_minor),
    CHECK (state = 'unloading' OR posted_operation_id IS NOT NULL)
);
CREATE UNIQUE INDEX card_returns_one_open ON card_returns (card_id) WHERE state <> 'finished';
INSERT INTO counters (name, value) VALUES ('card_return', 0);

-- Expiry: the last day of a card's validity (YYYYMMDD, as written on the card at issuance;
-- NULL for accounts opened without a card). `iccard office card expire` marks every active card
-- past it `expired`: no more loads; it can still be returned and refunded.
ALTER TABLE cards ADD COLUMN valid_until TEXT NULL;
