-- The first release: users with one name column.
CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    fullname   text NOT NULL,
    email      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
