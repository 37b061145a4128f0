-- The wrapper of a `.lua` migration on a standalone Redis (the migration's body is
-- inserted below as the function `migration`, run as a function of KEYS = its declared keys). KEYS: lock,
-- ledger, audit, then the declared keys. ARGV: token, ttl (ms), max audit entries,
-- version, row json ('' to delete), audit json.
local lock, ledger, audit = KEYS[1], KEYS[2], KEYS[3]
local token, ttl, max_audit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
if not is_current(lock, token, now) then return {'lost'} end
redis.call('HSET', lock, 'expires_at', int(now + ttl * 1000))
local declared = {}
for i = 4, #KEYS do declared[#declared + 1] = KEYS[i] end
local function migration(KEYS, ARGV)
USER_BODY
end
local ok, err = pcall(migration, declared, {})
if not ok then
  if type(err) == 'table' then err = err.err end
  return {'fail', tostring(err)}
end
if ARGV[5] == '' then redis.call('HDEL', ledger, ARGV[4]) else redis.call('HSET', ledger, ARGV[4], ARGV[5]) end
redis.call('RPUSH', audit, ARGV[6])
redis.call('LTRIM', audit, -max_audit, -1)
return {'ok'}
