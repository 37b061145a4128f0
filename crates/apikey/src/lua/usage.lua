-- KeyRecord::record_use. KEYS[1]: record. ARGV[1]: uses, ARGV[2]: last used.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'uses', ARGV[1])
local lu = tonumber(redis.call('HGET', KEYS[1], 'lu'))
if lu == nil or tonumber(ARGV[2]) > lu then redis.call('HSET', KEYS[1], 'lu', ARGV[2]) end
return 1
