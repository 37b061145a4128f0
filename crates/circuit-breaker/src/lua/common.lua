-- Shared by every circuit-breaker script: the arguments of a SharedPolicy, the store's clock,
-- the state hash and the helpers that mirror SharedMachine (crates/circuit-breaker/src/store.rs)
-- line by line.
-- KEYS: state hash, per-second buckets, instances, failing instances, probe leases.
-- ARGV[1..14]: the policy (see RedisStore::invocation); ARGV[15]: now in ms, or -1 for TIME.
local SK, BK, IK, FK, LK = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local WINDOW = tonumber(ARGV[1])
local MIN_CALLS = tonumber(ARGV[2])
local FAIL_RATE = tonumber(ARGV[3])
local SLOW_RATE = tonumber(ARGV[4])
local OPEN_WAIT = tonumber(ARGV[5])
local MULT = tonumber(ARGV[6])
local MAX_WAIT = tonumber(ARGV[7])
local PROBES = tonumber(ARGV[8])
local SUCC_NEEDED = tonumber(ARGV[9])
local MAX_HALF = tonumber(ARGV[10])
local LEASE = tonumber(ARGV[11])
local Q_MIN = tonumber(ARGV[12])
local Q_PCT = tonumber(ARGV[13])
local TTL = tonumber(ARGV[14])
-- The store's clock: Redis server time, or the milliseconds a store built with a clock sent.
local now = tonumber(ARGV[15])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local S = redis.call('HMGET', SK, 'st', 'gen', 'dl', 'trips', 'succ')
local st = S[1] or 'closed'
local gen = tonumber(S[2]) or 0
local dl = tonumber(S[3]) or 0
local trips = tonumber(S[4]) or 0
local succ = tonumber(S[5]) or 0

local function int(x) return string.format('%.0f', x) end
local function wait_for(k)
  local w = OPEN_WAIT * (MULT ^ (k - 1))
  if w >= MAX_WAIT then return MAX_WAIT end
  return math.floor(w)
end
local function go(to, deadline) st = to; gen = gen + 1; dl = deadline end
local function open()
  trips = trips + 1
  go('open', now + wait_for(trips))
  redis.call('DEL', LK)
end
local function close()
  go('closed', 0); trips = 0; succ = 0
  redis.call('DEL', BK, FK, LK)
end
local function advance()
  if st == 'open' and now >= dl then
    go('half_open', now + MAX_HALF); succ = 0
    redis.call('DEL', LK)
  elseif st == 'half_open' and now >= dl then
    open()
  end
end
local function window()
  local min_sec = math.floor(now / 1000) + 1 - WINDOW
  local all = redis.call('HGETALL', BK)
  local c, f, s = 0, 0, 0
  for i = 1, #all, 2 do
    local field = all[i]
    local sec = tonumber(string.sub(field, 3))
    if sec == nil or sec < min_sec then
      redis.call('HDEL', BK, field)
    else
      local v = tonumber(all[i + 1])
      local kind = string.sub(field, 1, 1)
      if kind == 'c' then c = c + v elseif kind == 'f' then f = f + v else s = s + v end
    end
  end
  return c, f, s
end
local function save()
  redis.call('HSET', SK, 'st', st, 'gen', int(gen), 'dl', int(dl), 'trips', int(trips), 'succ', int(succ))
  for _, k in ipairs({SK, BK, IK, FK, LK}) do redis.call('PEXPIRE', k, TTL) end
end
local function reply()
  local c, f, s = window()
  local retry = 0
  if st == 'open' then retry = math.max(dl - now, 0) elseif st == 'forced_open' then retry = OPEN_WAIT end
  return {st, int(gen), retry, c, f, s}
end
