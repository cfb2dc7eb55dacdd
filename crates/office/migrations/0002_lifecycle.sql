-- iccard back office, schema version 2: card products and manufacture (chip lots, production
-- orders and batches through their stages, card inventory).
--
-- Same rules as 0001: BIGINT and TEXT only, ids from `counters`, times in ms since the epoch,
-- money in minor units. Chip serials are TEXT of exactly 16 upper-case hex digits (8 bytes; a
-- u64 does not fit a BIGINT), compared as numbers in Rust, never with SQL text ordering (a
-- PostgreSQL collation may order text differently from SQLite).

INSERT INTO counters (name, value) VALUES
    ('product', 0), ('chip_lot', 0), ('production_order', 0), ('production_batch', 0),
    ('production_stage', 0), ('inventory_card', 0);

-- A card product; its personalization profile is versioned in product_versions (append-only:
-- a change writes version current_version + 1, cards keep the version they were issued with).
CREATE TABLE products (
    id BIGINT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    current_version BIGINT NOT NULL CHECK (current_version >= 1),
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE product_versions (
    product_id BIGINT NOT NULL REFERENCES products (id),
    version BIGINT NOT NULL CHECK (version >= 1),
    operation_id BIGINT NOT NULL REFERENCES operations (id),
    created_by_operator_id BIGINT NOT NULL REFERENCES operators (id),
    created_at_ms BIGINT NOT NULL,
    card_type TEXT NOT NULL CHECK (card_type IN ('registered', 'anonymous')),
    deposit_minor BIGINT NOT NULL CHECK (deposit_minor >= 0),
    fee_minor BIGINT NOT NULL CHECK (fee_minor >= 0),
    validity_months BIGINT NOT NULL CHECK (validity_months >= 1),
    max_balance_minor BIGINT NOT NULL CHECK (max_balance_minor >= 1),
    offline_purchase_limit_minor BIGINT NOT NULL CHECK (offline_purchase_limit_minor >= 0),
    offline_cumulative_limit_minor BIGINT NOT NULL CHECK (offline_cumulative_limit_minor >= 0),
    algorithm TEXT NOT NULL CHECK (algorithm IN ('3des', 'sm4')),
    PRIMARY KEY (product_id, version)
);

-- The applications of a product version and their access rights (space-separated tokens).
CREATE TABLE product_applications (
    product_id BIGINT NOT NULL,
    version BIGINT NOT NULL,
    ordinal BIGINT NOT NULL,
    application TEXT NOT NULL CHECK (application IN ('purse', 'access')),
    rights TEXT NOT NULL,
    PRIMARY KEY (product_id, version, ordinal),
    UNIQUE (product_id, version, application),
    FOREIGN KEY (product_id, version) REFERENCES product_versions (product_id, version)
);

-- Chips as received from a chip maker. Serials first..last (quantity of them); `reserved` of
-- them are promised to production orders, in serial order from the first.
CREATE TABLE chip_lots (
    id BIGINT PRIMARY KEY,
    lot_number TEXT NOT NULL UNIQUE,
    chip_maker TEXT NOT NULL,
    chip_model TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity >= 1),
    first_chip_serial TEXT NOT NULL UNIQUE,
    last_chip_serial TEXT NOT NULL UNIQUE,
    transport_key_version BIGINT NOT NULL CHECK (transport_key_version >= 0 AND transport_key_version <= 255),
    reserved BIGINT NOT NULL CHECK (reserved >= 0 AND reserved <= quantity),
    operation_id BIGINT NOT NULL REFERENCES operations (id),
    received_by_operator_id BIGINT NOT NULL REFERENCES operators (id),
    received_at_ms BIGINT NOT NULL
);

-- An order to make `quantity` cards of a product from a lot's chips first..last. Batches take
-- card bodies from it (`batched`); coding consumes its chips in serial order (`chips_used`).
CREATE TABLE production_orders (
    id BIGINT PRIMARY KEY,
    product_id BIGINT NOT NULL REFERENCES products (id),
    lot_id BIGINT NOT NULL REFERENCES chip_lots (id),
    quantity BIGINT NOT NULL CHECK (quantity >= 1),
    first_chip_serial TEXT NOT NULL UNIQUE,
    last_chip_serial TEXT NOT NULL UNIQUE,
    batched BIGINT NOT NULL CHECK (batched >= 0 AND batched <= quantity),
    chips_used BIGINT NOT NULL CHECK (chips_used >= 0 AND chips_used <= quantity),
    operation_id BIGINT NOT NULL REFERENCES operations (id),
    created_by_operator_id BIGINT NOT NULL REFERENCES operators (id),
    created_at_ms BIGINT NOT NULL
);

-- A production batch; `stage` is the last stage recorded ('started' before printing).
CREATE TABLE production_batches (
    id BIGINT PRIMARY KEY,
    order_id BIGINT NOT NULL REFERENCES production_orders (id),
    quantity BIGINT NOT NULL CHECK (quantity >= 1),
    stage TEXT NOT NULL CHECK (stage IN ('started', 'printing', 'coding', 'bronzing', 'packaging', 'gluing', 'testing')),
    operation_id BIGINT NOT NULL REFERENCES operations (id),
    created_by_operator_id BIGINT NOT NULL REFERENCES operators (id),
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- One row per stage a batch went through: who, where, when, and the counts.
CREATE TABLE production_stages (
    id BIGINT PRIMARY KEY,
    batch_id BIGINT NOT NULL REFERENCES production_batches (id),
    stage TEXT NOT NULL CHECK (stage IN ('printing', 'coding', 'bronzing', 'packaging', 'gluing', 'testing')),
    operation_id BIGINT NOT NULL REFERENCES operations (id),
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    machine_id BIGINT NOT NULL REFERENCES machines (id),
    equipment TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    count_in BIGINT NOT NULL CHECK (count_in >= 0),
    count_out BIGINT NOT NULL CHECK (count_out >= 0),
    count_voided BIGINT NOT NULL CHECK (count_voided >= 0),
    CHECK (count_out + count_voided = count_in),
    UNIQUE (batch_id, stage)
);

-- Physical cards (one per coded chip) and where they are. Distinct from `cards`, the shadow
-- accounts of issued cards: issuance links the two by application_serial.
CREATE TABLE inventory_cards (
    id BIGINT PRIMARY KEY,
    chip_serial TEXT NOT NULL UNIQUE,
    product_id BIGINT NOT NULL REFERENCES products (id),
    lot_id BIGINT NOT NULL REFERENCES chip_lots (id),
    order_id BIGINT NOT NULL REFERENCES production_orders (id),
    batch_id BIGINT NOT NULL REFERENCES production_batches (id),
    state TEXT NOT NULL CHECK (state IN ('in_production', 'in_stock', 'allocated', 'issued', 'returned', 'refurbished', 'destroyed', 'void')),
    allocated_branch_id BIGINT NULL REFERENCES branches (id),
    allocated_operator_id BIGINT NULL REFERENCES operators (id),
    application_serial TEXT NULL,
    product_version BIGINT NULL,
    void_reason TEXT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    CHECK ((state = 'allocated' AND ((allocated_branch_id IS NULL AND allocated_operator_id IS NOT NULL)
                                  OR (allocated_branch_id IS NOT NULL AND allocated_operator_id IS NULL)))
        OR (state <> 'allocated' AND allocated_branch_id IS NULL AND allocated_operator_id IS NULL)),
    CHECK (state <> 'issued' OR (application_serial IS NOT NULL AND product_version IS NOT NULL)),
    CHECK (state <> 'void' OR void_reason IS NOT NULL)
);
CREATE INDEX inventory_cards_batch ON inventory_cards (batch_id);
CREATE INDEX inventory_cards_state ON inventory_cards (state, product_id);

-- Every state change of a physical card, the first row being its creation (from_state NULL).
CREATE TABLE inventory_card_history (
    id BIGINT PRIMARY KEY,
    card_id BIGINT NOT NULL REFERENCES inventory_cards (id),
    operation_id BIGINT NOT NULL REFERENCES operations (id),
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    machine_id BIGINT NOT NULL REFERENCES machines (id),
    at_ms BIGINT NOT NULL,
    from_state TEXT NULL,
    to_state TEXT NOT NULL,
    allocated_branch_id BIGINT NULL,
    allocated_operator_id BIGINT NULL,
    application_serial TEXT NULL,
    product_version BIGINT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX inventory_card_history_card ON inventory_card_history (card_id);
