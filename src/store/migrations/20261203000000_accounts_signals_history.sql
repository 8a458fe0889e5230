-- The account store: profiles with their current feature values, usage
-- signals, and the score history.
--
-- One schema serves SQLite and PostgreSQL alike, so it keeps to types both
-- read the same way through sqlx's Any driver: TEXT, BIGINT and DOUBLE
-- PRECISION. Times are BIGINT microseconds since the Unix epoch; booleans are
-- BIGINT 0/1 (through the Any driver, a SQLite BOOLEAN reads back as an
-- integer that does not decode as bool). Every
-- TEXT key is declared NOT NULL because SQLite, unlike PostgreSQL, lets a
-- non-integer PRIMARY KEY column hold NULL otherwise.

CREATE TABLE accounts (
    account_id TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    segment TEXT NOT NULL,
    region TEXT NOT NULL,
    plan TEXT NOT NULL,
    annual_contract_value DOUBLE PRECISION NOT NULL,
    -- YYYY-MM-DD, or NULL when no renewal is scheduled.
    renewal_date TEXT,
    updated_at BIGINT NOT NULL
);

-- Exactly one of the three value columns is set per row; which one says the
-- feature's type.
CREATE TABLE account_features (
    account_id TEXT NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    feature TEXT NOT NULL,
    number_value DOUBLE PRECISION,
    text_value TEXT,
    bool_value BIGINT CHECK (bool_value IN (0, 1)),
    PRIMARY KEY (account_id, feature),
    CHECK (
        (CASE WHEN number_value IS NULL THEN 0 ELSE 1 END)
        + (CASE WHEN text_value IS NULL THEN 0 ELSE 1 END)
        + (CASE WHEN bool_value IS NULL THEN 0 ELSE 1 END) = 1
    )
);

CREATE TABLE signals (
    event_id TEXT NOT NULL PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    kind TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    occurred_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);

CREATE INDEX signals_account_occurred_at ON signals (account_id, occurred_at);

-- No foreign key to accounts: the history is an audit trail of what was
-- served, including scores of accounts sent inline that the store never
-- held. The primary key's leading columns double as the (account_id,
-- scored_at) index that range reads use, so there is no separate one.
CREATE TABLE score_history (
    account_id TEXT NOT NULL,
    model_version TEXT NOT NULL,
    scored_at BIGINT NOT NULL,
    churn_probability DOUBLE PRECISION NOT NULL,
    health_score DOUBLE PRECISION NOT NULL,
    band TEXT NOT NULL,
    -- JSON text, as the scorer wrote it.
    top_attributions TEXT NOT NULL,
    PRIMARY KEY (account_id, scored_at, model_version)
);
