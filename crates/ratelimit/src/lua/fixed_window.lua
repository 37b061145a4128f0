-- Fixed window (src/algorithm/fixed_window.rs): 'window:count'.
local function ttl_ms(q) return math.ceil(q.p / 1000) + 1000 end

local function load(q)
  local v = load_numbers(q)
  return { window = num(v[1], idiv(now, q.p)), count = num(v[2], 0) }
end

local function check(q, s, c)
  local limit, p = q.limit, q.p
  local w = idiv(now, p)
  local count = 0
  if w <= s.window then w = s.window; count = s.count end
  local reset = max0((w + 1) * p - now)
  if count + c <= limit then return true, limit - count - c, reset, -1 end
  local retry = -1
  if c <= limit then retry = reset end
  return false, max0(limit - count), reset, retry
end

local function consume(q, s, c)
  local w = idiv(now, q.p)
  local count = s.count
  if w > s.window then count = 0 else w = s.window end
  save(q, fmt(w) .. ':' .. fmt(count + c), ttl_ms(q))
end

local function refund(q, s, c)
  if idiv(now, q.p) <= s.window then
    save(q, fmt(s.window) .. ':' .. fmt(max0(s.count - c)), ttl_ms(q))
  end
end
