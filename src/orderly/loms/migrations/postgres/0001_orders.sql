-- Orders, their items, the warehouse stock and the transactional outbox of order-status events.
CREATE TABLE stocks (
    sku      bigint PRIMARY KEY,
    total    bigint NOT NULL CHECK (total >= 0),
    reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    -- The guard of last resort: whatever the code does, stock can never be over-reserved or go negative.
    CONSTRAINT reserved_within_total CHECK (reserved <= total)
);

CREATE TABLE orders (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL,
    status     text NOT NULL CHECK (status IN ('new', 'awaiting payment', 'failed', 'payed', 'cancelled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE order_items (
    order_id bigint NOT NULL REFERENCES orders (id),
    sku      bigint NOT NULL,
    count    integer NOT NULL CHECK (count > 0),
    PRIMARY KEY (order_id, sku)
);

CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    event_id   uuid NOT NULL UNIQUE,
    order_id   bigint NOT NULL,
    status     text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
