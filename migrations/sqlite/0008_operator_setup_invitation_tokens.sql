-- Explicit operators and invitation tokens (A1).
--
-- The first operator comes from `tally admin create-operator` or a one-time
-- setup token that a server with no operator makes at start; only the token's
-- SHA-256 is kept. Several instances may each have made one: any of them works,
-- and using one removes them all.
CREATE TABLE setup_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

-- An invitation is accepted with its token (only the SHA-256 kept), before it
-- expires, once. Invitations made before tokens have none and an expiry of 0:
-- they are listed as expired, to be withdrawn and sent again.
ALTER TABLE invitations ADD COLUMN token_hash TEXT;
ALTER TABLE invitations ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX invitations_token ON invitations(token_hash);
