-- iccard back office, schema version 1: storage foundations, ledger, operators, machines, audit.
--
-- One text for SQLite and PostgreSQL: only BIGINT and TEXT columns, no auto-increment (ids come
-- from the `counters` table inside the write transaction), no dialect-specific syntax. Money is
-- BIGINT minor units; times are BIGINT milliseconds since the Unix epoch (UTC).

-- Every write transaction first updates this one row: on PostgreSQL that row lock serializes
-- writers (SQLite's BEGIN IMMEDIATE already does), so read-modify-write in Rust is safe.
CREATE TABLE write_lock (
    id BIGINT PRIMARY KEY,
    generation BIGINT NOT NULL
);
INSERT INTO write_lock (id, generation) VALUES (1, 0);

CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES
    ('branch', 0), ('machine', 0), ('operator', 0), ('account', 0), ('card', 0),
    ('operation', 0), ('journal_entry', 0), ('journal_line', 0), ('history', 0);

CREATE TABLE office_settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE branches (
    id BIGINT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE machines (
    id BIGINT PRIMARY KEY,
    machine_number TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('office_console', 'recharge_point', 'terminal')),
    branch_id BIGINT NOT NULL REFERENCES branches (id),
    psam_serial TEXT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('active', 'retired')),
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    CHECK ((kind = 'terminal' AND psam_serial IS NOT NULL) OR (kind <> 'terminal' AND psam_serial IS NULL))
);

CREATE TABLE machine_history (
    id BIGINT PRIMARY KEY,
    machine_id BIGINT NOT NULL REFERENCES machines (id),
    at_ms BIGINT NOT NULL,
    changed_by_operator_id BIGINT NULL,
    change TEXT NOT NULL,
    state TEXT NOT NULL,
    psam_serial TEXT NULL
);

CREATE TABLE operators (
    id BIGINT PRIMARY KEY,
    login TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('administrator', 'issuance_clerk', 'recharge_clerk', 'auditor')),
    password_hash TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'disabled')),
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE operator_history (
    id BIGINT PRIMARY KEY,
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    at_ms BIGINT NOT NULL,
    changed_by_operator_id BIGINT NULL,
    change TEXT NOT NULL,
    role TEXT NOT NULL,
    state TEXT NOT NULL
);

-- Chart of accounts. net_debit_minor = sum of debits - sum of credits, kept in step with the
-- journal lines by every posting; `iccard office check` recomputes it.
CREATE TABLE accounts (
    id BIGINT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('asset', 'liability', 'income')),
    machine_id BIGINT NULL REFERENCES machines (id),
    net_debit_minor BIGINT NOT NULL
);

-- Per-card shadow account. balance_minor is what the float holds for the card (loads minus
-- settled purchases); proven_balance_minor is the last balance the card itself reported.
CREATE TABLE cards (
    id BIGINT PRIMARY KEY,
    application_serial TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('active')),
    balance_minor BIGINT NOT NULL CHECK (balance_minor >= 0),
    deposit_minor BIGINT NOT NULL CHECK (deposit_minor >= 0),
    online_serial BIGINT NOT NULL CHECK (online_serial >= 0),
    offline_serial BIGINT NOT NULL CHECK (offline_serial >= 0),
    proven_balance_minor BIGINT NOT NULL,
    proven_at_ms BIGINT NOT NULL,
    opened_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE card_history (
    id BIGINT PRIMARY KEY,
    card_id BIGINT NOT NULL REFERENCES cards (id),
    operation_id BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    change TEXT NOT NULL,
    state TEXT NOT NULL,
    balance_minor BIGINT NOT NULL,
    online_serial BIGINT NOT NULL,
    offline_serial BIGINT NOT NULL,
    proven_balance_minor BIGINT NOT NULL
);

-- Business records: one row per business operation, naming its operator and machine.
CREATE TABLE operations (
    id BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    machine_id BIGINT NOT NULL REFERENCES machines (id),
    at_ms BIGINT NOT NULL,
    card_id BIGINT NULL REFERENCES cards (id),
    amount_minor BIGINT NULL
);

CREATE TABLE card_loads (
    operation_id BIGINT PRIMARY KEY REFERENCES operations (id),
    card_id BIGINT NOT NULL REFERENCES cards (id),
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    card_balance_before_minor BIGINT NOT NULL,
    online_serial BIGINT NOT NULL,
    UNIQUE (card_id, online_serial)
);

CREATE TABLE card_purchases (
    operation_id BIGINT PRIMARY KEY REFERENCES operations (id),
    card_id BIGINT NOT NULL REFERENCES cards (id),
    terminal_machine_id BIGINT NOT NULL REFERENCES machines (id),
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    offline_serial BIGINT NOT NULL,
    terminal_serial BIGINT NOT NULL,
    UNIQUE (card_id, offline_serial)
);

CREATE TABLE journal_entries (
    id BIGINT PRIMARY KEY,
    operation_id BIGINT NOT NULL REFERENCES operations (id),
    at_ms BIGINT NOT NULL,
    memo TEXT NOT NULL
);

CREATE TABLE journal_lines (
    id BIGINT PRIMARY KEY,
    entry_id BIGINT NOT NULL REFERENCES journal_entries (id),
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    debit_minor BIGINT NOT NULL CHECK (debit_minor >= 0),
    credit_minor BIGINT NOT NULL CHECK (credit_minor >= 0)
);
CREATE INDEX journal_lines_entry ON journal_lines (entry_id);
CREATE INDEX journal_lines_account ON journal_lines (account_id);

-- Append-only, hash-chained audit log. audit_head holds the last sequence number and hash, so
-- a truncated tail is detected too.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    operator_login TEXT NOT NULL,
    machine_number TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'denied', 'failed')),
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    last_hash TEXT NOT NULL
);
INSERT INTO audit_head (id, last_seq, last_hash)
    VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
