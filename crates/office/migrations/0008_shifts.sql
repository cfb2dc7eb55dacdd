-- iccard back office, schema version 8: cashier shifts at recharge points.
--
-- A clerk opens a shift at a recharge point with the cash counted in the drawer and closes it
-- with the cash counted again. What the books expect is the opening count plus the cash
-- postings of the clerk's operations on that machine's cash account between the opening and
-- the closing operation (operation ids order them exactly: writers are serialized); the
-- difference (counted - expected) is stored and, when not zero, posted against the
-- `cash_over_short` account (income kind: an over credits it, a short debits it), which the
-- first shift creates. At most one open shift per machine and per operator: two partial unique
-- indexes make the database refuse a second one whatever the code does (SQLite 3.8+ and
-- PostgreSQL both accept `CREATE UNIQUE INDEX ... WHERE`).

INSERT INTO counters (name, value) VALUES ('shift', 0);

CREATE TABLE shifts (
    id BIGINT PRIMARY KEY,
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    machine_id BIGINT NOT NULL REFERENCES machines (id),
    state TEXT NOT NULL CHECK (state IN ('open', 'closed')),
    open_operation_id BIGINT NOT NULL UNIQUE REFERENCES operations (id),
    opened_at_ms BIGINT NOT NULL,
    opening_cash_minor BIGINT NOT NULL CHECK (opening_cash_minor >= 0),
    -- The machine's cash account balance in the books when the shift opened (information: a
    -- count that differs shows cash that moved between shifts).
    book_cash_at_open_minor BIGINT NOT NULL,
    close_operation_id BIGINT NULL UNIQUE REFERENCES operations (id),
    closed_at_ms BIGINT NULL,
    closed_by_operator_id BIGINT NULL REFERENCES operators (id),
    expected_cash_minor BIGINT NULL,
    counted_cash_minor BIGINT NULL CHECK (counted_cash_minor >= 0),
    difference_minor BIGINT NULL,
    -- The over/short posting (NULL when the count matched).
    difference_entry_id BIGINT NULL REFERENCES journal_entries (id),
    -- Why a supervisor closed another operator's shift.
    close_reason TEXT NULL,
    CHECK (
        (state = 'open' AND close_operation_id IS NULL AND closed_at_ms IS NULL
            AND closed_by_operator_id IS NULL AND expected_cash_minor IS NULL
            AND counted_cash_minor IS NULL AND difference_minor IS NULL
            AND difference_entry_id IS NULL)
        OR (state = 'closed' AND close_operation_id IS NOT NULL AND closed_at_ms IS NOT NULL
            AND closed_by_operator_id IS NOT NULL AND expected_cash_minor IS NOT NULL
            AND counted_cash_minor IS NOT NULL AND difference_minor IS NOT NULL
            AND close_operation_id > open_operation_id
            AND ((difference_minor = 0) = (difference_entry_id IS NULL)))
    )
);
CREATE UNIQUE INDEX shifts_one_open_per_machine ON shifts (machine_id) WHERE state = 'open';
CREATE UNIQUE INDEX shifts_one_open_per_operator ON shifts (operator_id) WHERE state = 'open';
CREATE INDEX shifts_opened_at ON shifts (opened_at_ms);

-- Whether cash operations at a recharge point need an open shift of their operator there.
INSERT INTO office_settings (name, value) VALUES ('shifts_required', 'false');
