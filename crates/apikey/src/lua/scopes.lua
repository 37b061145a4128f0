-- Store::update_scopes. KEYS[1]: record. ARGV[1]: scopes (JSON). Returns the record, or nil.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'sc', ARGV[1])
return redis.call('HGETALL', KEYS[1])
