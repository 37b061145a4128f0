-- Sliding-window counter (src/algorithm/sliding_counter.rs): 'window:prev:curr'; the
-- weighting is the same double arithmetic as in Rust.
local function ttl_ms(q) return math.ceil(2 * q.p / 1000) + 1000 end

local function load(q)
  local v = load_numbers(q)
  return { window = num(v[1], idiv(now, q.p)), prev = num(v[2], 0), curr = num(v[3], 0) }
end

-- The state moved to now's window: window, prev, curr, and now held at the stored window's
-- start when time went backwards.
local function at(s, p)
  local w = idiv(now, p)
  if w < s.window then return s.window, s.prev, s.curr, s.window * p end
  if w == s.window then return w, s.prev, s.curr, now end
  if w == s.window + 1 then return w, s.curr, 0, now end
  return w, 0, 0, now
end

local function check(q, s, c)
  local limit, p = q.limit, q.p
  local w, prev, curr, t_now = at(s, p)
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
end

local function consume(q, s, c)
  local w, prev, curr = at(s, q.p)
  save(q, fmt(w) .. ':' .. fmt(prev) .. ':' .. fmt(curr + c), ttl_ms(q))
end

local function refund(q, s, c)
  local w, prev, curr = at(s, q.p)
  save(q, fmt(w) .. ':' .. fmt(prev) .. ':' .. fmt(max0(curr - c)), ttl_ms(q))
end
