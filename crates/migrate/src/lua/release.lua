-- LeaseState::release. KEYS: lock. ARGV: token.
local lock, token = KEYS[1], tonumber(ARGV[1])
local h = redis.call('HMGET', lock, 'holder', 'token')
if h[1] ~= false and h[1] ~= '' and tonumber(h[2]) == token then
  redis.call('HSET', lock, 'holder', '', 'expires_at', int(now_us()))
end
return 1
