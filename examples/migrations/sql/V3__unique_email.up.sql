-- palisade: no-transaction
-- palisade: backup = users
-- Emails become case-insensitive and unique. CREATE INDEX CONCURRENTLY cannot run inside a
-- transaction, so this runs statement by statement: if the index fails (two emails that
-- differ only in case), the lower-casing before it has already happened, and the migrator
-- puts the `users` table back from the backup it took just before.
UPDATE users SET email = lower(email) WHERE email <> lower(email);
CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email);
