-- LeaseState::info. KEYS: lock. Returns {} or {holder, token, expires_in_ms}.
local now = now_us()
local h = redis.call('HMGET', KEYS[1], 'holder', 'token', 'expires_at')
local expires = tonumber(h[3]) or 0
if h[1] ~= false and h[1] ~= '' and expires > now then
  return {h[1], tonumber(h[2]), math.floor((expires - now) / 1000)}
end
return {}
