-- The key that signs page tokens (unless SEARCH_PAGE_TOKEN_SECRET sets one): one per
-- database, so that every replica accepts the tokens of the others. Two random UUIDs
-- (gen_random_uuid is built in from PostgreSQL 13, pgcrypto is not needed) give 244
-- random bits.
CREATE TABLE page_token_key (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    key      bytea NOT NULL
);
INSERT INTO page_token_key (key)
VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
