-- KeyRecord::charge (Credits::refill_at + Credits::charge), line by line, with the
-- idempotency record. KEYS[1]: record, KEYS[2]: idempotency record (only read when
-- ARGV[4] == '1'). ARGV[1]: now, ARGV[2]: cost, ARGV[3]: idempotency TTL (ms).
local now, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
if ARGV[4] == '1' then
  local prev = redis.call('GET', KEYS[2])
  if prev then return {'charged', prev, 1} end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found'} end
local s = status_at(KEYS[1], now)
if s ~= 'active' and s ~= 'rotating' then return {'not_active'} end
local c = redis.call('HMGET', KEYS[1], 'cr', 'cra', 'cri', 'crt')
local remaining = tonumber(c[1])
if remaining == nil then return {'unlimited'} end
local amount, interval, refilled = tonumber(c[2]), tonumber(c[3]), tonumber(c[4]) or 0
if amount ~= nil then
  if interval == nil or interval < 1 then interval = 1 end
  if now >= refilled + interval then
    local periods = math.floor((now - refilled) / interval)
    refilled = refilled + periods * interval
    if amount > remaining then remaining = amount end
  end
end
if remaining >= cost then
  remaining = remaining - cost
  redis.call('HSET', KEYS[1], 'cr', int(remaining), 'crt', int(refilled))
  if ARGV[4] == '1' then redis.call('SET', KEYS[2], int(remaining), 'PX', ARGV[3]) end
  return {'charged', int(remaining), 0}
end
redis.call('HSET', KEYS[1], 'cr', int(remaining), 'crt', int(refilled))
return {'out_of_credits', int(remaining)}
