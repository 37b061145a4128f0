DROP TRIGGER users_sync_names ON users;
DROP FUNCTION users_sync_names();
UPDATE users SET fullname = concat_ws(' ', first_name, last_name) WHERE fullname IS NULL;
ALTER TABLE users ALTER COLUMN fullname SET NOT NULL;
ALTER TABLE users DROP COLUMN first_name, DROP COLUMN last_name;
