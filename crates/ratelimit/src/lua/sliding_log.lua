-- Sliding-window log (src/algorithm/sliding_log.rs): a sorted set of admitted requests
-- scored by time, each member 'T:c': its cost c and T, the running total of the costs
-- logged up to and including it, written with 16 digits so that members of one score sort
-- by T. Times never decrease along the set (a request is logged at the newest time when the
-- clock stepped back, as the memory store merges it into its newest entry), so T grows with
-- rank, and every sum the algorithm needs is a difference of two running totals: O(log n)
-- reads per call, whatever the cost.
local function ttl_ms(q) return math.ceil(q.p / 1000) + 1000 end

local function member(total, c) return string.format('%016.0f', total) .. ':' .. fmt(c) end

-- Running total, cost and time of the entry at `rank` (negative from the end).
local function entry(q, rank)
  local r = redis.call('ZRANGE', q.key, rank, rank, 'WITHSCORES')
  local total, c = string.match(r[1], '^(%d+):(%d+)$')
  return tonumber(total), tonumber(c), tonumber(r[2])
end

-- The first rank in [lo, hi] whose running total satisfies `ok` (hi when none before it).
local function first_rank(q, lo, hi, ok)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if ok(entry(q, mid)) then hi = mid else lo = mid + 1 end
  end
  return lo
end

-- n entries; before: the running total before the first; expired: after the last entry
-- that has left the window (score <= now - p); total: after the newest.
local function load(q)
  local n = redis.call('ZCARD', q.key)
  if n == 0 then return { n = 0, before = 0, expired = 0, total = 0, newest = nil } end
  local first_total, first_cost = entry(q, 0)
  local total, _, newest = entry(q, -1)
  local s = { n = n, before = first_total - first_cost, total = total, newest = newest }
  s.expired = s.before
  local last_out = redis.call('ZREVRANGEBYSCORE', q.key, fmt(now - q.p), '-inf', 'LIMIT', 0, 1)
  if #last_out > 0 then s.expired = tonumber(string.match(last_out[1], '^(%d+):')) end
  return s
end

local function newest_reset(q, s)
  if s.newest == nil then return 0 end
  return max0(s.newest + q.p - now)
end

local function check(q, s, c)
  local limit, p = q.limit, q.p
  local live = s.total - s.expired
  if live + c <= limit then
    local reset
    if c > 0 then reset = p else reset = newest_reset(q, s) end
    return true, limit - live - c, reset, -1
  end
  local retry = -1
  if c <= limit then
    -- The first live entry by whose expiry enough has left the window: its running total
    -- reaches expired + (live + c - limit). Binary search, from the first live rank.
    local target = s.expired + live + c - limit
    local first_live = redis.call('ZCOUNT', q.key, '-inf', fmt(now - p))
    local rank = first_rank(q, first_live, s.n - 1, function(total) return total >= target end)
    local _, _, ts = entry(q, rank)
    retry = max0(ts + p - now)
  end
  return false, max0(limit - live), newest_reset(q, s), retry
end

local function consume(q, s, c)
  -- Expired entries go (each once: amortised over the admissions that logged them).
  redis.call('ZREMRANGEBYSCORE', q.key, '-inf', fmt(now - q.p))
  if c > 0 then
    local at = now
    if s.newest ~= nil and s.newest > now then at = s.newest end
    redis.call('ZADD', q.key, fmt(at), member(s.total + c, c))
  end
  redis.call('PEXPIRE', q.key, ttl_ms(q))
end

-- Newest first: entries whose running total is above total - c go; the one that straddles
-- it keeps the part below.
local function refund(q, s, c)
  if s.n == 0 or c <= 0 then return end
  local target = s.total - c
  if target <= s.before then
    redis.call('DEL', q.key)
    return
  end
  local rank = first_rank(q, 0, s.n - 1, function(total) return total > target end)
  local total, c_at, ts = entry(q, rank)
  redis.call('ZREMRANGEBYRANK', q.key, rank, -1)
  local keep = c_at - (total - target)
  if keep > 0 then redis.call('ZADD', q.key, fmt(ts), member(target, keep)) end
  redis.call('PEXPIRE', q.key, ttl_ms(q))
end
