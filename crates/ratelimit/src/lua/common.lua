-- palisade-ratelimit: shared prelude of every script (a transcription of src/algorithm.rs).
-- ARGV: now_us ('0' = ask Redis TIME), algorithm code, cost, quota count,
--       then per quota: limit, burst, period_us, interval_us.
-- KEYS: per quota one state key; the sliding log has two (sorted set, then meta).
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local alg = ARGV[2]
local cost = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local kpq = 1
if alg == 'swl' then kpq = 2 end

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
    key = KEYS[(i - 1) * kpq + 1], meta = KEYS[(i - 1) * kpq + 2],
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

-- State loading: every algorithm's state as a table, fresh when absent or unreadable.
local function load(q)
  local raw = nil
  if alg ~= 'swl' then raw = redis.call('GET', q.key) end
  if raw == false then raw = nil end
  local v = split(raw)
  if alg == 'tb' then
    return { tokens = num(v[1], q.burst), last = num(v[2], now) }
  elseif alg == 'gcra' then
    return { tat = num(v[1], 0) }
  elseif alg == 'fw' then
    return { window = num(v[1], idiv(now, q.p)), count = num(v[2], 0) }
  elseif alg == 'swc' then
    return { window = num(v[1], idiv(now, q.p)), prev = num(v[2], 0), curr = num(v[3], 0) }
  else
    local m = redis.call('GET', q.meta)
    if m == false then m = nil end
    local mv = split(m)
    return { sum = num(mv[1], 0), seq = num(mv[2], 0) }
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

local function cost_of(member) return tonumber(string.match(member, ':(%d+)$')) or 0 end

-- Sum of the log's expired entries (score <= now - p).
local function expired_sum(q)
  local sum = 0
  local old = redis.call('ZRANGEBYSCORE', q.key, '-inf', fmt(now - q.p))
  for _, m in ipairs(old) do sum = sum + cost_of(m) end
  return sum
end

local function newest_reset(q)
  local last = redis.call('ZRANGE', q.key, -1, -1, 'WITHSCORES')
  if #last == 0 then return 0 end
  return max0(tonumber(last[2]) + q.p - now)
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
    local live = s.sum - expired_sum(q)
    if live + c <= limit then
      local reset
      if c > 0 then reset = p else reset = newest_reset(q) end
      return true, limit - live - c, reset, -1
    end
    local reset = newest_reset(q)
    local retry = -1
    if c <= limit then
      local freed = 0
      local start = 0
      local done = false
      while not done do
        local batch = redis.call('ZRANGEBYSCORE', q.key, '(' .. fmt(now - p), '+inf', 'WITHSCORES', 'LIMIT', start, 64)
        if #batch == 0 then break end
        for j = 1, #batch, 2 do
          freed = freed + cost_of(batch[j])
          if live - freed + c <= limit then
            retry = max0(tonumber(batch[j + 1]) + p - now)
            done = true
            break
          end
        end
        start = start + 64
      end
    end
    return false, max0(limit - live), reset, retry
  end
end

local function save_log_meta(q, s)
  local ttl = ttl_ms(q)
  redis.call('SET', q.meta, fmt(s.sum) .. ':' .. fmt(s.seq), 'PX', ttl)
  redis.call('PEXPIRE', q.key, ttl)
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
    s.sum = s.sum - expired_sum(q)
    redis.call('ZREMRANGEBYSCORE', q.key, '-inf', fmt(now - q.p))
    if c > 0 then
      s.seq = s.seq + 1
      redis.call('ZADD', q.key, fmt(now), fmt(s.seq) .. ':' .. fmt(c))
      s.sum = s.sum + c
    end
    save_log_meta(q, s)
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
  else
    local left = c
    while left > 0 do
      local top = redis.call('ZPOPMAX', q.key)
      if #top == 0 then break end
      local mc = cost_of(top[1])
      local take = math.min(left, mc)
      left = left - take
      s.sum = s.sum - take
      if mc > take then
        s.seq = s.seq + 1
        redis.call('ZADD', q.key, top[2], fmt(s.seq) .. ':' .. fmt(mc - take))
      end
    end
    if s.sum < 0 then s.sum = 0 end
    save_log_meta(q, s)
  end
end
