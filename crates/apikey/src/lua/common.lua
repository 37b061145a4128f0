-- Shared by every script: KeyRecord::status_at, line by line (record.rs).
local function int(x) return string.format('%.0f', x) end
local function status_at(k, now)
  local f = redis.call('HMGET', k, 'st', 'exp', 'gu')
  local st = f[1]
  if st == 'revoked' then return 'revoked' end
  local exp = tonumber(f[2])
  if exp ~= nil and now >= exp then return 'expired' end
  if st == 'rotating' then
    local gu = tonumber(f[3])
    if gu == nil or now >= gu then return 'expired' end
  end
  return st
end
