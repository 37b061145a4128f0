-- palisade: phase = expand
-- Expand: first and last name beside `fullname`. The release built against V2 (blue) still
-- writes `fullname` only and the one built against V5 (green) writes the new columns only,
-- so while both run a trigger fills whichever side a new row lacks.
ALTER TABLE users ADD COLUMN first_name text, ADD COLUMN last_name text;
UPDATE users
   SET first_name = split_part(fullname, ' ', 1),
       last_name  = nullif(substr(fullname, length(split_part(fullname, ' ', 1)) + 2), '');
ALTER TABLE users ALTER COLUMN fullname DROP NOT NULL;
CREATE FUNCTION users_sync_names() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.first_name IS NULL AND NEW.fullname IS NOT NULL THEN
        NEW.first_name := split_part(NEW.fullname, ' ', 1);
        NEW.last_name := nullif(substr(NEW.fullname, length(NEW.first_name) + 2), '');
    ELSIF NEW.fullname IS NULL AND NEW.first_name IS NOT NULL THEN
        NEW.fullname := concat_ws(' ', NEW.first_name, NEW.last_name);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER users_sync_names BEFORE INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION users_sync_names();
