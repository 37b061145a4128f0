-- Delete one entry if its namespace tracks it (an id of another namespace is left alone).
-- KEYS[1] the entry, KEYS[2] its namespace's id set. ARGV[1] the id.
-- Returns 1 when an entry was deleted.
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
