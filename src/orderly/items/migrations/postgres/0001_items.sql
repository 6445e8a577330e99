CREATE TABLE campaigns (
    id         bigserial PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO campaigns (id, name) VALUES (1, 'Первая запись');
SELECT setval(pg_get_serial_sequence('campaigns', 'id'), 1);

CREATE TABLE items (
    id          bigserial PRIMARY KEY,
    campaign_id bigint      NOT NULL REFERENCES campaigns (id),
    name        text        NOT NULL,
    description text,
    priority    bigint      NOT NULL,
    removed     boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX items_campaign_id_idx ON items (campaign_id);
CREATE INDEX items_priority_idx ON items (priority);

-- Change events written in the same transaction as the change; `orderly items relay` moves them to JetStream.
CREATE TABLE items_outbox (
    id         bigserial PRIMARY KEY,
    event_id   uuid        NOT NULL UNIQUE,
    subject    text        NOT NULL,
    payload    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
