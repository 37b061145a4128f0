-- One row per answered request: who asked, which provider answered (now, or when the
-- cached answer was made), the tokens and the dollars spent and saved (in millionths).
CREATE TABLE usage_events (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    key_id       text        NOT NULL,
    owner        text        NOT NULL,
    provider     text        NOT NULL,
    model        text        NOT NULL,
    source       text        NOT NULL CHECK (source IN ('computed', 'joined', 'exact_hit', 'semantic_hit')),
    input_tokens bigint      NOT NULL CHECK (input_tokens >= 0),
    output_tokens bigint     NOT NULL CHECK (output_tokens >= 0),
    cost_micros  bigint      NOT NULL CHECK (cost_micros >= 0),
    saved_micros bigint      NOT NULL CHECK (saved_micros >= 0)
);

CREATE INDEX usage_events_owner_at ON usage_events (owner, at);
