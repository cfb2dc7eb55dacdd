-- iccard back office, schema version 9: uploads of offline purchases and their settlement.
--
-- Merchants own terminals; a terminal machine is assigned the terminal id of its PSAM and an
-- upload token (only its SHA-256 is stored). Batches are chained per terminal (sequence,
-- previous hash); every record answered is kept with the code it was answered, keyed by
-- (terminal id, terminal serial). Settlement runs apply accepted records to the card shadow
-- accounts and post one entry per merchant, terminal and day; cases record what needs a person.

INSERT INTO counters (name, value) VALUES
    ('merchant', 0), ('upload_batch', 0), ('offline_record', 0), ('settlement_case', 0),
    ('settlement_run', 0);

CREATE TABLE merchants (
    id BIGINT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- One row per terminal machine that may upload. last_sequence/last_hash: the last batch
-- accepted (0 and the genesis hash before any).
CREATE TABLE settlement_terminals (
    machine_id BIGINT PRIMARY KEY REFERENCES machines (id),
    terminal_id TEXT NOT NULL UNIQUE,
    merchant_id BIGINT NOT NULL REFERENCES merchants (id),
    token_hash TEXT NOT NULL,
    assigned_at_ms BIGINT NOT NULL,
    last_sequence BIGINT NOT NULL,
    last_hash TEXT NOT NULL
);

CREATE TABLE upload_batches (
    id BIGINT PRIMARY KEY,
    terminal_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    hash TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    record_count BIGINT NOT NULL,
    results TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('http', 'file')),
    received_at_ms BIGINT NOT NULL,
    UNIQUE (terminal_id, sequence)
);

-- state: unsettled (accepted, waiting for a run), settled, duplicate (the same purchase
-- settled from another record), held (not settled: a case decides), no_money (the terminal
-- reported no debit), refused (answered with a code that refuses it).
CREATE TABLE offline_records (
    id BIGINT PRIMARY KEY,
    terminal_id TEXT NOT NULL,
    terminal_serial BIGINT NOT NULL,
    batch_id BIGINT NOT NULL REFERENCES upload_batches (id),
    machine_id BIGINT NOT NULL REFERENCES machines (id),
    merchant_id BIGINT NOT NULL REFERENCES merchants (id),
    content TEXT NOT NULL,
    code TEXT NOT NULL,
    card_id BIGINT NULL REFERENCES cards (id),
    application_serial TEXT NOT NULL,
    offline_serial BIGINT NOT NULL,
    amount_minor BIGINT NOT NULL,
    balance_before_minor BIGINT NOT NULL,
    status TEXT NOT NULL,
    business_date TEXT NOT NULL,
    purchase_at_ms BIGINT NULL,
    state TEXT NOT NULL CHECK (state IN ('unsettled', 'settled', 'duplicate', 'held', 'no_money', 'refused')),
    settlement_run_id BIGINT NULL,
    entry_id BIGINT NULL,
    received_at_ms BIGINT NOT NULL,
    UNIQUE (terminal_id, terminal_serial)
);
CREATE INDEX offline_records_card ON offline_records (card_id, offline_serial);
CREATE INDEX offline_records_state ON offline_records (state, business_date);

CREATE TABLE settlement_runs (
    id BIGINT PRIMARY KEY,
    business_date TEXT NOT NULL,
    operation_id BIGINT NOT NULL REFERENCES operations (id),
    at_ms BIGINT NOT NULL,
    records_settled BIGINT NOT NULL,
    amount_minor BIGINT NOT NULL,
    cases_opened BIGINT NOT NULL
);

-- One journal entry per merchant, terminal and purchase day of a run.
CREATE TABLE settlement_postings (
    entry_id BIGINT PRIMARY KEY REFERENCES journal_entries (id),
    run_id BIGINT NOT NULL REFERENCES settlement_runs (id),
    merchant_id BIGINT NOT NULL REFERENCES merchants (id),
    machine_id BIGINT NOT NULL REFERENCES machines (id),
    terminal_id TEXT NOT NULL,
    business_date TEXT NOT NULL,
    records BIGINT NOT NULL,
    amount_minor BIGINT NOT NULL
);

-- case_key makes a case open once (a gap seen by two runs is one case).
CREATE TABLE settlement_cases (
    id BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    case_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('open', 'resolved')),
    terminal_id TEXT NULL,
    card_id BIGINT NULL REFERENCES cards (id),
    application_serial TEXT NULL,
    record_id BIGINT NULL REFERENCES offline_records (id),
    evidence TEXT NULL,
    detail TEXT NOT NULL,
    business_date TEXT NOT NULL,
    opened_at_ms BIGINT NOT NULL,
    resolved_at_ms BIGINT NULL,
    resolved_by_operator_id BIGINT NULL REFERENCES operators (id),
    resolution TEXT NULL
);
CREATE INDEX settlement_cases_state ON settlement_cases (state);
