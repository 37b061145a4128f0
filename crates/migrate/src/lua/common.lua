-- Shared by every script: the lease machine of src/ledger.rs (LeaseState), line by line.
-- The lock hash holds `holder` ('' when released), `token` and `expires_at` (microseconds,
-- Redis server time).
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function int(x) return string.format('%.0f', x) end
-- LeaseState::is_current
local function is_current(lock, token, now)
  local h = redis.call('HMGET', lock, 'holder', 'token', 'expires_at')
  return h[1] ~= false and h[1] ~= '' and tonumber(h[2]) == token and (tonumber(h[3]) or 0) > now
end
