-- LeaseState::acquire. KEYS: lock. ARGV: holder, ttl (ms).
-- Returns {1, token} or {0, holder, expires_in_ms}.
local lock, holder, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
local now = now_us()
local h = redis.call('HMGET', lock, 'holder', 'token', 'expires_at')
local expires = tonumber(h[3]) or 0
if h[1] ~= false and h[1] ~= '' and expires > now then
  return {0, h[1], math.floor((expires - now) / 1000)}
end
local token = (tonumber(h[2]) or 0) + 1
redis.call('HSET', lock, 'holder', holder, 'token', int(token), 'expires_at', int(now + ttl * 1000))
return {1, token}
