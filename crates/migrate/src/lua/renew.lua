-- LeaseState::renew. KEYS: lock. ARGV: token, ttl (ms). Returns 1 or 0 (lost).
local lock, token, ttl = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_us()
if not is_current(lock, token, now) then return 0 end
redis.call('HSET', lock, 'expires_at', int(now + ttl * 1000))
return 1
