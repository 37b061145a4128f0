-- palisade-ratelimit: the prelude of every script. Each script is this prelude, one
-- algorithm's file (gcra.lua, token_bucket.lua, fixed_window.lua, sliding_log.lua,
-- sliding_counter.lua: a transcription of src/algorithm/<name>.rs defining ttl_ms, load,
-- check, consume and refund) and one operation (acquire.lua, peek.lua, refund.lua).
-- ARGV: now_us ('0' = ask Redis TIME), algorithm code, cost, quota count,
--       then per quota: limit, burst, period_us, interval_us.
-- KEYS: one state key per quota.
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local cost = tonumber(ARGV[3])
local n = tonumber(ARGV[4])

local function fmt(x) return string.format('%.0f', x) end
local function max0(x) if x < 0 then return 0 end return x end
-- Exact floor(a / b) for non-negative integers below 2^53.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function num(x, default)
  local v = tonumber(x)
  if v == nil then return default end
  return v
end

local function quota(i)
  local b = 4 + (i - 1) * 4
  return {
    limit = tonumber(ARGV[b + 1]), burst = tonumber(ARGV[b + 2]),
    p = tonumber(ARGV[b + 3]), t = tonumber(ARGV[b + 4]),
    key = KEYS[i],
  }
end

-- The string state keys this call read or wrote, by name (false: absent): a state read
-- again, or read back after this call wrote it, costs no second GET. Every write of a string
-- state goes through `save`, so the copy is what Redis holds until the call ends.
local states_seen = {}

-- A string key's numbers 'a:b:c', or none when absent.
local function load_numbers(q)
  local raw = states_seen[q.key]
  if raw == nil then
    raw = redis.call('GET', q.key)
    states_seen[q.key] = raw
  end
  local out = {}
  if raw then for part in string.gmatch(raw, '[^:]+') do out[#out + 1] = tonumber(part) end end
  return out
end

-- Write a string state (and remember it for `load_numbers`).
local function save(q, value, ttl)
  redis.call('SET', q.key, value, 'PX', ttl)
  states_seen[q.key] = value
end
