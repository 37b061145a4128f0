-- KeyRecord::revoke. KEYS[1]: record. ARGV[1]: now. Returns the record, or nil.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HGET', KEYS[1], 'st') ~= 'revoked' then
  redis.call('HSET', KEYS[1], 'st', 'revoked', 'rev', ARGV[1])
  redis.call('HDEL', KEYS[1], 'gu')
end
return redis.call('HGETALL', KEYS[1])
