-- Store::rehash. KEYS[1]: record. ARGV[1]: expected version, ARGV[2]: new version,
-- ARGV[3]: new hash (hex). Returns 1 if replaced.
if redis.call('HGET', KEYS[1], 'hv') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'hv', ARGV[2], 'h', ARGV[3])
return 1
