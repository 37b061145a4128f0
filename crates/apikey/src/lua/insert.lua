-- Store::insert. KEYS[1]: record. ARGV: field, value, ... Returns 1, or 0 if the id is taken.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
