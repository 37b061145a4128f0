-- palisade: phase = contract
-- Contract: once no live app reads or writes `fullname`, drop it and the trigger. Runs only
-- when every live app version was built against V4 or later (the migrator checks the
-- registered apps). No down file: the column's data is gone, so this step is one-way.
DROP TRIGGER users_sync_names ON users;
DROP FUNCTION users_sync_names();
UPDATE users SET first_name = '' WHERE first_name IS NULL;
ALTER TABLE users DROP COLUMN fullname, ALTER COLUMN first_name SET NOT NULL;
