-- palisade-ratelimit: shared prelude of every script (a transcription of src/algorithm.rs).
-- ARGV: now_us ('0' = ask Redis TIME), algorithm code, cost, quota count,
--       then per quota: limit, burst, period_us, interval_us.
-- KEYS: one state key per quota (the sliding log's is a sorted set).
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local alg = ARGV[2]
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

local function ttl_ms(q)
  local h
  if alg == 'tb' or alg == 'gcra' then h = q.burst * q.t
  elseif alg == 'swc' then h = 2 * q.p
  else h = q.p end
  return math.ceil(h / 1000) + 1000
end

local function split(s)
  local out = {}
  if s then for part in string.gmatch(s, '[^:]+') do out[#out + 1] = tonumber(part) end end
  return out
end

-- The sliding-window log is a sorted set of admitted requests scored by time, each member
-- 'T:c': its cost c and T, the running total of the costs logged up to and including it,
-- written with 16 digits so that members of one score sort by T. Times never decrease along
-- the set (a request is logged at the newest time when the clock stepped back, as the memory
-- store merges it into its newest entry), so T grows with rank, and every sum the algorithm
-- needs is a difference of two running totals: O(log n) per read, whatever the cost.
local function member(total, c) return string.format('%016.0f', total) .. ':' .. fmt(c) end

-- Running total, cost and time of the entry at `rank` (negative from the end).
local function log_entry(q, rank)
  local r = redis.call('ZRANGE', q.key, rank, rank, 'WITHSCORES')
  local total, c = string.match(r[1], '^(%d+):(%d+)$')
  return tonumber(total), tonumber(c), tonumber(r[2])
end

-- The first rank in [lo, hi] whose running total satisfies `ok` (hi when none before it).
local function first_rank(q, lo, hi, ok)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if ok(log_entry(q, mid)) then hi = mid else lo = mid + 1 end
  end
  return lo
end

-- State loading: every algorithm's state as a table, fresh when absent or unreadable.
local function load(q)
  if alg == 'swl' then
    -- n entries; before: the running total before the first; expired: after the last
    -- entry that has left the window (score <= now - p); total: after the newest.
    local n = redis.call('ZCARD', q.key)
    if n == 0 then return { n = 0, before = 0, expired = 0, total = 0, newest = nil } end
    local first_total, first_cost = log_entry(q, 0)
    local total, _, newest = log_entry(q, -1)
    local s = { n = n, before = first_total - first_cost, total = total, newest = newest }
    s.expired = s.before
    local last_out = redis.call('ZREVRANGEBYSCORE', q.key, fmt(now - q.p), '-inf', 'LIMIT', 0, 1)
    if #last_out > 0 then s.expired = tonumber(string.match(last_out[1], '^(%d+):')) end
    return s
  end
  local raw = redis.call('GET', q.key)
  if raw == false then raw = nil end
  local v = split(raw)
  if alg == 'tb' then
    return { tokens = num(v[1], q.burst), last = num(v[2], now) }
  elseif alg == 'gcra' then
    return { tat = num(v[1], 0) }
  elseif alg == 'fw' then
    return { window = num(v[1], idiv(now, q.p)), count = num(v[2], 0) }
  else
    return { window = num(v[1], idiv(now, q.p)), prev = num(v[2], 0), curr = num(v[3], 0) }
  end
end

local function tb_refill(tokens, last, burst, t)
  if now <= last then return math.min(tokens, burst), last end
  local add = idiv(now - last, t)
  if tokens + add >= burst then return burst, now end
  return tokens + add, last + add * t
end

local function counter_window(s, p)
  local w = idiv(now, p)
  if w < s.window then return s.window, s.prev, s.curr, s.window * p end
  if w == s.window then return w, s.prev, s.curr, now end
  if w == s.window + 1 then return w, s.curr, 0, now end
  return w, 0, 0, now
end

local function newest_reset(q, s)
  if s.newest == nil then return 0 end
  return max0(s.newest + q.p - now)
end

-- check: returns allowed (bool), remaining, reset_us, retry_us (-1: never / admitted).
local function check(q, s, c)
  local limit, p = q.limit, q.p
  if alg == 'tb' then
    local burst, t = q.burst, q.t
    local tok, l = tb_refill(s.tokens, s.last, burst, t)
    if c <= tok then
      local left = tok - c
      return true, left, max0(l + (burst - left) * t - now), -1
    end
    local retry = -1
    if c <= burst then retry = max0(l + (c - tok) * t - now) end
    return false, tok, max0(l + (burst - tok) * t - now), retry
  elseif alg == 'gcra' then
    local t = q.t
    local tau = q.burst * t
    local tat0 = math.max(s.tat, now)
    local new_tat = tat0 + c * t
    if new_tat <= now + tau then
      return true, idiv(now + tau - new_tat, t), new_tat - now, -1
    end
    local retry = -1
    if c <= q.burst then retry = new_tat - tau - now end
    return false, idiv(max0(now + tau - tat0), t), tat0 - now, retry
  elseif alg == 'fw' then
    local w = idiv(now, p)
    local count = 0
    if w <= s.window then w = s.window; count = s.count end
    local reset = max0((w + 1) * p - now)
    if count + c <= limit then return true, limit - count - c, reset, -1 end
    local retry = -1
    if c <= limit then retry = reset end
    return false, max0(limit - count), reset, retry
  elseif alg == 'swc' then
    local w, prev, curr, t_now = counter_window(s, p)
    local elapsed = t_now - w * p
    local weight = prev * (p - elapsed) / p
    local allowed = weight + (curr + c) <= limit
    local used = curr
    if allowed then used = curr + c end
    local remaining = math.max(0, math.floor(limit - weight - used))
    local reset = 0
    if used > 0 then reset = (w + 2) * p - t_now elseif prev > 0 then reset = (w + 1) * p - t_now end
    local retry = -1
    if not allowed and c <= limit then
      if curr + c <= limit then
        local x = (p - elapsed) - ((limit - curr - c) * p) / prev
        retry = math.max(0, math.ceil(x)) + 1
      else
        local y = p - ((limit - c) * p) / curr
        retry = (p - elapsed) + math.max(0, math.ceil(y)) + 1
      end
    end
    return allowed, remaining, reset, retry
  else
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
      local _, _, ts = log_entry(q, rank)
      retry = max0(ts + p - now)
    end
    return false, max0(limit - live), newest_reset(q, s), retry
  end
end

-- consume: apply an admitted request of cost c.
local function consume(q, s, c)
  local ttl = ttl_ms(q)
  if alg == 'tb' then
    local tok, l = tb_refill(s.tokens, s.last, q.burst, q.t)
    redis.call('SET', q.key, fmt(max0(tok - c)) .. ':' .. fmt(l), 'PX', ttl)
  elseif alg == 'gcra' then
    redis.call('SET', q.key, fmt(math.max(s.tat, now) + c * q.t), 'PX', ttl)
  elseif alg == 'fw' then
    local w = idiv(now, q.p)
    local count = s.count
    if w > s.window then count = 0 else w = s.window end
    redis.call('SET', q.key, fmt(w) .. ':' .. fmt(count + c), 'PX', ttl)
  elseif alg == 'swc' then
    local w, prev, curr = counter_window(s, q.p)
    redis.call('SET', q.key, fmt(w) .. ':' .. fmt(prev) .. ':' .. fmt(curr + c), 'PX', ttl)
  else
    -- Expired entries go (each once: amortised over the admissions that logged them).
    redis.call('ZREMRANGEBYSCORE', q.key, '-inf', fmt(now - q.p))
    if c > 0 then
      local at = now
      if s.newest ~= nil and s.newest > now then at = s.newest end
      redis.call('ZADD', q.key, fmt(at), member(s.total + c, c))
    end
    redis.call('PEXPIRE', q.key, ttl)
  end
end

-- refund: give back up to c units.
local function refund(q, s, c)
  local ttl = ttl_ms(q)
  if alg == 'tb' then
    local tok, l = tb_refill(s.tokens, s.last, q.burst, q.t)
    tok = math.min(tok + c, q.burst)
    if tok == q.burst then l = math.max(now, l) end
    redis.call('SET', q.key, fmt(tok) .. ':' .. fmt(l), 'PX', ttl)
  elseif alg == 'gcra' then
    redis.call('SET', q.key, fmt(math.max(s.tat - c * q.t, now)), 'PX', ttl)
  elseif alg == 'fw' then
    if idiv(now, q.p) <= s.window then
      redis.call('SET', q.key, fmt(s.window) .. ':' .. fmt(max0(s.count - c)), 'PX', ttl)
    end
  elseif alg == 'swc' then
    local w, prev, curr = counter_window(s, q.p)
    redis.call('SET', q.key, fmt(w) .. ':' .. fmt(prev) .. ':' .. fmt(max0(curr - c)), 'PX', ttl)
  elseif s.n > 0 and c > 0 then
    -- Newest first: entries whose running total is above total - c go; the one that
    -- straddles it keeps the part below.
    local target = s.total - c
    if target <= s.before then
      redis.call('DEL', q.key)
      return
    end
    local rank = first_rank(q, 0, s.n - 1, function(total) return total > target end)
    local total, cost, ts = log_entry(q, rank)
    redis.call('ZREMRANGEBYRANK', q.key, rank, -1)
    local keep = cost - (total - target)
    if keep > 0 then redis.call('ZADD', q.key, fmt(ts), member(target, keep)) end
    redis.call('PEXPIRE', q.key, ttl)
  end
end
