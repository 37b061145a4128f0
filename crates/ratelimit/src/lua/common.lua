-- palisade-ratelimit: the prelude of every script. Each script is this prelude, one
-- algorithm's file (gcra.lua, token_bucket.lua, fixed_window.lua, sliding_log.lua,
-- sliding_counter.lua: a transcription of src/algorithm/<name>.rs defining ttl_ms, load,
-- check, consume and refund) and one operation (acquire.lua, peek.lua, refund.lua).
-- ARGV: now_us ('0' = ask Redis TIME), algorithm code, cost, quota count,
--       then per quota: limit, burst, period_us, interval_us.
-- KEYS: one state key per quota.
-- (A script call's ARGV are strings; a batch item's (batch.lua) are numbers, the code and
-- an owner strings: every number is read through `tonumber` or `num`, which take both.)
-- The prelude and the algorithm (and ledger.lua) only define functions and the locals they
-- share; each operation starts with `begin(KEYS, ARGV)`. A batch (batch.lua) defines them
-- once for all its items, each item's operation a function of its own that begins with its
-- own KEYS and ARGV, instead of making two dozen closures per item.
local call_keys, call_argv, now, cost, n
-- A local, not a global looked up by name at each of the dozens of calls a lease makes.
local tonumber = tonumber

-- An integer as Redis stores it. '%d' (a C long) is exact for the integers below 2^53 that
-- every state holds and costs half of '%.0f' (a float conversion); anything else takes '%.0f'.
local function fmt(x)
  if x == math.floor(x) and x < 9007199254740992 and x > -9007199254740992 then
    return string.format('%d', x)
  end
  return string.format('%.0f', x)
end
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

-- Quota i of the call, parsed from ARGV (callers only read it); the first one once per
-- call, kept in a local rather than a table (every table a call makes costs the collector).
local quota_1 = nil
local function quota(i)
  if i == 1 and quota_1 then return quota_1 end
  local b = 4 + (i - 1) * 4
  local q = {
    limit = tonumber(call_argv[b + 1]), burst = tonumber(call_argv[b + 2]),
    p = tonumber(call_argv[b + 3]), t = tonumber(call_argv[b + 4]),
    key = call_keys[i],
  }
  if i == 1 then quota_1 = q end
  return q
end

-- The string state keys this call read or wrote, by name (false: absent): a state read
-- again, or read back after this call wrote it, costs no second GET. Every write of a string
-- state goes through `save`, so the copy is what Redis holds (or will hold, once
-- `flush_saves` wrote what `hold_saves` kept back) until the call ends.
local states_seen

-- The numbers of a state 'a:b:c': each non-empty part between ':' that `tonumber` reads,
-- in order. One number (GCRA), two or three are read without `gmatch` (an iterator, a
-- closure and a table per state: ~3k instructions); anything else as `gmatch` reads it.
local function numbers_of(raw)
  if not string.find(raw, ':', 1, true) then return { tonumber(raw) } end
  local a, b = string.match(raw, '^([^:]+):([^:]+)$')
  if a then
    a, b = tonumber(a), tonumber(b)
    if a and b then return { a, b } end
  else
    local c
    a, b, c = string.match(raw, '^([^:]+):([^:]+):([^:]+)$')
    if a then
      a, b, c = tonumber(a), tonumber(b), tonumber(c)
      if a and b and c then return { a, b, c } end
    end
  end
  local out = {}
  for part in string.gmatch(raw, '[^:]+') do out[#out + 1] = tonumber(part) end
  return out
end

-- A string key's numbers 'a:b:c', or none when absent.
local function load_numbers(q)
  local raw = states_seen[q.key]
  if raw == nil then
    raw = redis.call('GET', q.key)
    states_seen[q.key] = raw
  end
  if not raw then return {} end
  return numbers_of(raw)
end

-- Writes kept back by `hold_saves` until `flush_saves`: per key its last value and TTL, in
-- the order the keys were first written (nil: each save is written at once).
local held_saves, held_order = nil, nil

-- Write a string state (and remember it for `load_numbers`).
local function save(q, value, ttl)
  states_seen[q.key] = value
  if held_saves then
    if held_saves[q.key] == nil then held_order[#held_order + 1] = q.key end
    held_saves[q.key] = { value, ttl }
  else
    redis.call('SET', q.key, value, 'PX', ttl)
  end
end

-- Start a call (every operation's first line): its keys and arguments, its time (Redis'
-- TIME when ARGV[1] is 0), cost and quota count; nothing read, parsed or written yet.
local function begin(keys, argv)
  call_keys, call_argv = keys, argv
  now = tonumber(argv[1])
  if now == 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  cost = tonumber(argv[3])
  n = tonumber(argv[4])
  quota_1, states_seen, held_saves, held_order = nil, {}, nil, nil
end
